#!/usr/bin/env python3
"""A schema-only AWS provider for offline `terraform validate` and `terraform test` (mock_provider).

It speaks Terraform's plugin protocol version 6 over gRPC, written from the protocol's published
description (no generated code, no copied .proto): the few messages it needs are encoded by hand
below. It answers:

  tfplugin6.Provider/GetProviderSchema            the AWS schema (pre-encoded by `encode`)
  tfplugin6.Provider/Validate*Config              no diagnostics (Terraform core does the checking)
  tfplugin6.Provider/ConfigureProvider, StopProvider, GetFunctions   empty answers
  grpc.health.v1.Health/Check                     SERVING
  plugin.GRPCController/Shutdown                  exits

Anything that would touch AWS (plan, apply, read) is not implemented: with `mock_provider` Terraform
never calls those. The go-plugin handshake (magic cookie, protocol line on stdout, and AutoMTLS when
Terraform sends PLUGIN_CLIENT_CERT) is done here too.

Usage:
  provider.py encode SCHEMA.json OUT.bin [DIR...]   build the GetProviderSchema response once
                                              (with DIRs: only the types their .tf files mention)
  provider.py serve OUT.bin                   what Terraform runs (through a wrapper script)
  provider.py reattach OUT.bin SOCKET         serve on a unix socket until killed; prints the value
                                              for TF_REATTACH_PROVIDERS
"""

import base64
import datetime
import json
import os
import sys
import threading

MAGIC_COOKIE_KEY = "TF_PLUGIN_MAGIC_COOKIE"
MAGIC_COOKIE_VALUE = "d602bf8f470bc67ca7faa0386276bbdd4330efaf76d1a219cb4d6991ca9872b2"

# --- protobuf wire format (only what we emit) -------------------------------------------------


def varint(n):
    out = bytearray()
    n &= (1 << 64) - 1
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def f_bytes(num, data):
    if isinstance(data, str):
        data = data.encode()
    return varint(num << 3 | 2) + varint(len(data)) + data


def f_varint(num, value):
    if not value:
        return b""
    return varint(num << 3 | 0) + varint(int(value))


# tfplugin6 messages:
#   Schema            { int64 version = 1; Block block = 2; }
#   Schema.Block      { int64 version = 1; repeated Attribute attributes = 2; repeated NestedBlock block_types = 3; ... }
#   Schema.Attribute  { string name = 1; bytes type = 2; string description = 3; bool required = 4;
#                       bool optional = 5; bool computed = 6; bool sensitive = 7; ... }
#   Schema.NestedBlock{ string type_name = 1; Block block = 2; NestingMode nesting = 3; int64 min_items = 4; int64 max_items = 5; }
#   GetProviderSchema.Response { Schema provider = 1; map<string, Schema> resource_schemas = 2;
#                                map<string, Schema> data_source_schemas = 3; ... }


def enc_attribute(a):
    return (
        f_bytes(1, a["name"])
        + f_bytes(2, json.dumps(a["type"], separators=(",", ":")))
        + f_varint(4, a["required"])
        + f_varint(5, a["optional"])
        + f_varint(6, a["computed"])
    )


def enc_block(b):
    out = b"".join(f_bytes(2, enc_attribute(a)) for a in b["attributes"])
    for nb in b["block_types"]:
        inner = (
            f_bytes(1, nb["name"])
            + f_bytes(2, enc_block(nb["block"]))
            + f_varint(3, nb["nesting"])
            + f_varint(4, nb["min_items"])
            + f_varint(5, nb["max_items"])
        )
        out += f_bytes(3, inner)
    return out


def enc_schema(b):
    return f_bytes(2, enc_block(b))


def used_types(config_dirs):
    """Resource and data source types a configuration mentions (plus any word that looks like one)."""
    import re

    found = set()
    for d in config_dirs:
        for root, _dirs, files in os.walk(d):
            if "/." in root:
                continue
            for name in files:
                if name.endswith((".tf", ".tftest.hcl")):
                    with open(os.path.join(root, name)) as f:
                        found.update(re.findall(r"\baws_[a-z0-9_]+", f.read()))
    return found


def encode(schema_path, out_path, only_for=None):
    """Encode the GetProviderSchema response. With only_for (configuration directories), keep only
    the types they mention: Terraform decodes the whole schema every time it starts the provider,
    and `terraform test` starts it for every run. Unknown types stay unknown either way."""
    with open(schema_path) as f:
        schema = json.load(f)
    if only_for:
        keep = used_types(only_for)
        for table in ("resources", "data_sources"):
            schema[table] = {k: v for k, v in schema[table].items() if k in keep}
    out = bytearray(f_bytes(1, enc_schema(schema["provider"])))
    for field, table in ((2, "resources"), (3, "data_sources")):
        for name in sorted(schema[table]):
            entry = f_bytes(1, name) + f_bytes(2, enc_schema(schema[table][name]))
            out += f_bytes(field, entry)
    with open(out_path, "wb") as f:
        f.write(out)


# --- the server ---------------------------------------------------------------------------------


def make_tls():
    """The server half of go-plugin's AutoMTLS: a fresh self-signed certificate for "localhost",
    returned as (key PEM, certificate PEM, DER base64 for the handshake line)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, "localhost"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "order-worker offline provider"),
        ]
    )
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(seconds=30))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=True,
                data_encipherment=False,
                key_agreement=True,
                key_cert_sign=True,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    der = cert.public_bytes(serialization.Encoding.DER)
    return key_pem, cert_pem, base64.b64encode(der).decode().rstrip("=")


def serve(schema_bin, reattach_socket=None):
    if reattach_socket is None and os.environ.get(MAGIC_COOKIE_KEY) != MAGIC_COOKIE_VALUE:
        sys.stderr.write("This is a Terraform provider plugin: Terraform runs it, not you.\n")
        sys.exit(1)
    versions = os.environ.get("PLUGIN_PROTOCOL_VERSIONS", "6").split(",")
    if "6" not in versions:
        sys.stderr.write(f"offline provider speaks protocol 6 only; Terraform offers {versions}\n")
        sys.exit(1)

    from concurrent import futures

    import grpc

    with open(schema_bin, "rb") as f:
        schema_response = f.read()
    done = threading.Event()

    # Never outlive whoever started us (Terraform, or scripts/check-terraform for a reattached
    # server), even if it dies without saying goodbye.
    parent = os.getppid()

    def watch_parent():
        while not done.wait(1.0):
            if os.getppid() != parent:
                done.set()

    threading.Thread(target=watch_parent, daemon=True).start()

    def const(payload):
        return lambda request, context: payload

    def shutdown(request, context):
        if reattach_socket is None:  # a long-lived (reattached) server outlives each Terraform command
            done.set()
        return b""

    unary = {
        "/tfplugin6.Provider/GetProviderSchema": const(schema_response),
        "/tfplugin6.Provider/ValidateProviderConfig": const(b""),
        "/tfplugin6.Provider/ValidateResourceConfig": const(b""),
        "/tfplugin6.Provider/ValidateDataResourceConfig": const(b""),
        "/tfplugin6.Provider/ValidateEphemeralResourceConfig": const(b""),
        "/tfplugin6.Provider/ConfigureProvider": const(b""),
        "/tfplugin6.Provider/StopProvider": const(b""),
        "/tfplugin6.Provider/GetFunctions": const(b""),
        "/grpc.health.v1.Health/Check": const(f_varint(1, 1)),  # status: SERVING
        "/plugin.GRPCController/Shutdown": shutdown,
    }

    class Handler(grpc.GenericRpcHandler):
        def service(self, details):
            fn = unary.get(details.method)
            if fn is None:
                return None  # UNIMPLEMENTED
            # No (de)serializers: requests and responses stay raw bytes.
            return grpc.unary_unary_rpc_method_handler(fn)

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), handlers=[Handler()])
    client_cert = os.environ.get("PLUGIN_CLIENT_CERT")
    cert_field = ""
    if reattach_socket is not None:
        # TF_REATTACH_PROVIDERS mode: one server for many Terraform commands (terraform test starts
        # a provider for every run otherwise). Reattachment has no TLS; the socket is private.
        server.add_insecure_port("unix:" + reattach_socket)
        server.start()
        os.chmod(reattach_socket, 0o600)
        sys.stdout.write(
            json.dumps(
                {
                    "registry.terraform.io/hashicorp/aws": {
                        "Protocol": "grpc",
                        "ProtocolVersion": 6,
                        "Pid": os.getpid(),
                        "Test": True,
                        "Addr": {"Network": "unix", "String": reattach_socket},
                    }
                }
            )
            + "\n"
        )
        sys.stdout.flush()
        done.wait()
        server.stop(grace=0.2)
        return
    if client_cert:
        key_pem, cert_pem, cert_field = make_tls()
        # The server side of go-plugin's mutual TLS: Terraform verifies our certificate. We do not
        # ask for Terraform's: its key is on P-521, which gRPC's BoringSSL does not accept for client
        # authentication. The port is bound to 127.0.0.1 and lives as long as one Terraform command.
        creds = grpc.ssl_server_credentials([(key_pem, cert_pem)], require_client_auth=False)
        port = server.add_secure_port("127.0.0.1:0", creds)
    else:
        port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    line = f"1|6|tcp|127.0.0.1:{port}|grpc"
    if cert_field:
        line += "|" + cert_field
    sys.stdout.write(line + "\n")
    sys.stdout.flush()
    done.wait()
    server.stop(grace=0.2)


def main():
    if len(sys.argv) >= 4 and sys.argv[1] == "encode":
        encode(sys.argv[2], sys.argv[3], sys.argv[4:])
    elif len(sys.argv) == 3 and sys.argv[1] == "serve":
        serve(sys.argv[2])
    elif len(sys.argv) == 4 and sys.argv[1] == "reattach":
        serve(sys.argv[2], reattach_socket=sys.argv[3])
    else:
        sys.stderr.write(__doc__)
        sys.exit(2)


if __name__ == "__main__":
    main()
