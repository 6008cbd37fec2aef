#!/usr/bin/python3
"""gRPC health check over mutual TLS, for Kubernetes exec probes.

The server accepts only clients with a certificate from its CA, and kubelet's
built-in grpc probe cannot present one; grpc_health_probe is not in Debian. This
calls grpc.health.v1.Health/Check with python3-grpcio (Debian) and a client
certificate. Health checking needs no role, so a certificate that the access
file does not list is enough (`offsite certs issue --dir D --name probe`).

Exit 0 when the server answers SERVING, 1 otherwise (the reason on stderr).
The messages are encoded by hand, so no generated stubs are needed:
HealthCheckRequest{service} is field 1 (string); the response's status is
field 1 (enum, SERVING = 1).
"""
import argparse
import sys


def encode_request(service: str) -> bytes:
    data = service.encode()
    if not data:
        return b""
    if len(data) > 127:
        raise ValueError("service name too long")
    return b"\x0a" + bytes([len(data)]) + data


def decode_status(response: bytes) -> int:
    # Proto3 omits the default (UNKNOWN = 0); the status is a one-byte varint.
    if len(response) >= 2 and response[0] == 0x08:
        return response[1]
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--addr", default="127.0.0.1:50051", help="server address")
    parser.add_argument("--ca", help="CA certificate PEM (mTLS)")
    parser.add_argument("--cert", help="client certificate PEM (mTLS)")
    parser.add_argument("--key", help="client key PEM (mTLS)")
    parser.add_argument("--server_name", default="",
                        help="name to verify in the server certificate [host of --addr]")
    parser.add_argument("--service", default="", help="service to check [the whole server]")
    parser.add_argument("--insecure", action="store_true", help="plaintext (server --insecure)")
    parser.add_argument("--timeout_s", type=float, default=3.0)
    args = parser.parse_args()
    import grpc  # after parsing, so --help works without python3-grpcio

    if args.insecure:
        channel = grpc.insecure_channel(args.addr)
    else:
        if not (args.ca and args.cert and args.key):
            parser.error("--ca, --cert and --key are required unless --insecure")
        try:
            with open(args.ca, "rb") as f:
                ca = f.read()
            with open(args.cert, "rb") as f:
                cert = f.read()
            with open(args.key, "rb") as f:
                key = f.read()
        except OSError as e:
            print(f"health-check: {e}", file=sys.stderr)
            return 1
        credentials = grpc.ssl_channel_credentials(ca, key, cert)
        options = []
        if args.server_name:
            options.append(("grpc.ssl_target_name_override", args.server_name))
        channel = grpc.secure_channel(args.addr, credentials, options)

    check = channel.unary_unary(
        "/grpc.health.v1.Health/Check",
        request_serializer=lambda b: b,
        response_deserializer=lambda b: b)
    try:
        response = check(encode_request(args.service), timeout=args.timeout_s)
    except grpc.RpcError as e:
        print(f"health-check: {args.addr}: {e.code().name}: {e.details()}", file=sys.stderr)
        return 1
    finally:
        channel.close()
    status = decode_status(response)
    names = {0: "UNKNOWN", 1: "SERVING", 2: "NOT_SERVING", 3: "SERVICE_UNKNOWN"}
    if status != 1:
        print(f"health-check: {args.addr}: {names.get(status, status)}", file=sys.stderr)
        return 1
    print(f"health-check: {args.addr}: SERVING")
    return 0


if __name__ == "__main__":
    sys.exit(main())
