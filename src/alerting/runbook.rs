//! What to do next: one short runbook line per kind of alert or dead letter.

/// The kind given to a message Pub/Sub dead-lettered itself after its delivery attempts ran out.
pub const MAX_DELIVERY_ATTEMPTS: &str = "max_delivery_attempts";

/// The runbook line of a kind (`error_kind` of a dead letter, or an alert's kind).
pub fn runbook(kind: &str) -> &'static str {
    match kind {
        "invalid_extract" => {
            "The file can never be parsed: ask the marketplace for a corrected upload of the same \
             table and day; the batch stays held until then or `datashare release` drops the file."
        }
        "unknown_layout" => {
            "An object landed outside extracts/<table>/dt=YYYY-MM-DD/: move it to the right \
             place (or delete it if it is not an extract); nothing to replay."
        }
        "malformed_message" => {
            "A message without the shape of its topic: find its publisher from the archived \
             attributes, fix it, then `datashare replay --dead-letters <subscription>`."
        }
        "partner_rejected" => {
            "The partner refused the delivery (4xx): check the archived request and the \
             partner's answer, fix the cause with the partner, then replay the dead letters."
        }
        "host_key" => {
            "The SFTP server's host key is not the pinned one: confirm the new key with the \
             partner out of band before updating the contract; never trust it blindly."
        }
        "sink_auth" => {
            "The partner refused our credentials: rotate or fix the secret in Secret Manager, \
             then replay the dead letters of the sink's subscription."
        }
        "sink_config" => {
            "A sink is misconfigured (address, certificate, folder): fix the contract or \
             settings, redeploy, then replay the dead letters."
        }
        MAX_DELIVERY_ATTEMPTS => {
            "Pub/Sub gave up after its delivery attempts: the consumer kept failing \
             transiently; read its logs for the message id, fix the cause, then replay the \
             dead letters of the source subscription."
        }
        "batch.held" => {
            "The day's products are held: fix or re-upload the failed files, or run \
             `datashare release --date <day>` to deliver without them."
        }
        "quality.threshold" => {
            "A data-quality share crossed its threshold: look at the quality report and the \
             quarantine of the batch; if blocking, re-upload or release the batch."
        }
        "quality.volume" => {
            "The row count is far from the median of the last 7 batches: check with the \
             marketplace whether the extract is complete before the partner relies on it."
        }
        "extract.missing" => {
            "No complete batch for the day at its deadline: check the raw bucket and the \
             marketplace's upload job; the batch runs as soon as its marker arrives."
        }
        "sink.check_failed" => {
            "A sink failed its connection check before a deadline: check the partner's server, \
             the credentials and the network now, before files are due."
        }
        "privacy.gate" => {
            "A product failed the privacy gate and was not delivered: review the contract's \
             columns and minimum group sizes; do not release it as is."
        }
        "reconciliation" => {
            "Product totals do not reconcile with the curated data: compare the manifest with \
             the quality report before anything is delivered."
        }
        "budget.threshold" => {
            "Spending crossed a budget threshold: check the billing report for the service \
             that grew and scale it down if it is unexpected."
        }
        "powerbi.refresh_failed" => {
            "A Power BI refresh failed: read serviceExceptionJson in the details, fix the data \
             source in the workspace; the next batch triggers a new refresh."
        }
        "powerbi.refresh_stuck" => {
            "A Power BI refresh runs past its limit: cancel it in the workspace's refresh \
             history; the monitor requests again after the next update."
        }
        "powerbi.stale" => {
            "A Power BI item's last completed refresh is older than its SLA: look for a failed \
             refresh or missing batches first."
        }
        "powerbi.quota" => {
            "A Power BI item used its daily refreshes: nothing is lost, the next refresh reads \
             every partition; refresh by hand after 00:00 UTC if the day matters."
        }
        "powerbi.config" => {
            "Entra or Power BI refused the monitor (secret, workspace access, item id): rotate \
             datashare-powerbi-client-secret or fix config/powerbi.toml, then redeploy."
        }
        _ => {
            "Read the details and the logs for the fingerprint; fix the cause, then replay \
             the dead letters if messages were parked."
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_known_kind_has_its_own_line() {
        let kinds = [
            "invalid_extract",
            "unknown_layout",
            "malformed_message",
            "partner_rejected",
            "host_key",
            "sink_auth",
            "sink_config",
            MAX_DELIVERY_ATTEMPTS,
            "batch.held",
            "quality.threshold",
            "quality.volume",
            "extract.missing",
            "sink.check_failed",
            "privacy.gate",
            "reconciliation",
            "budget.threshold",
            "powerbi.refresh_failed",
            "powerbi.refresh_stuck",
            "powerbi.stale",
            "powerbi.quota",
            "powerbi.config",
        ];
        let default = runbook("something.else");
        let mut lines: Vec<&str> = kinds.iter().map(|k| runbook(k)).collect();
        assert!(lines.iter().all(|l| *l != default && !l.is_empty()));
        lines.sort();
        lines.dedup();
        assert_eq!(lines.len(), kinds.len(), "one distinct line per kind");
    }
}
