"""A small OTLP/HTTP receiver for the tests (and for a look at the telemetry on a laptop).

Listens on 127.0.0.1 (a free port unless --port), accepts OTLP http/protobuf exports at
/v1/traces and /v1/metrics (what the collector sidecar receives on Cloud Run), and appends
one JSON object a line to --out: {"signal": "traces"|"metrics", "body": <the request as
protobuf JSON>}. Prints {"port": N} on stdout once listening. Stops on SIGTERM.

Needs opentelemetry-proto (scripts/setup.sh installs it in the `otlp` venv).
"""

import argparse
import gzip
import json
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from google.protobuf.json_format import MessageToDict
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

SIGNALS = {
    "/v1/traces": ("traces", ExportTraceServiceRequest, ExportTraceServiceResponse),
    "/v1/metrics": ("metrics", ExportMetricsServiceRequest, ExportMetricsServiceResponse),
}


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", required=True, help="JSON lines file to append to")
    ap.add_argument("--port", type=int, default=0)
    args = ap.parse_args()
    lock = threading.Lock()
    out = open(args.out, "a", encoding="utf-8")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            known = SIGNALS.get(self.path)
            if known is None:
                self.send_error(404)
                return
            name, request_type, response_type = known
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if self.headers.get("Content-Encoding") == "gzip":
                body = gzip.decompress(body)
            if self.headers.get("Content-Type") != "application/x-protobuf":
                self.send_error(415, "http/protobuf only")
                return
            request = request_type()
            request.ParseFromString(body)
            line = json.dumps({"signal": name, "body": MessageToDict(request)})
            with lock:
                out.write(line + "\n")
                out.flush()
            reply = response_type().SerializeToString()
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, *_):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    print(json.dumps({"port": server.server_address[1]}), flush=True)
    server.serve_forever()
    out.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
