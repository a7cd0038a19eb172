"""An independent client of the Weft CA: Debian's python3-grpcio with stubs made by protoc and grpc_python_plugin.

usage: ca_client.py STUBS_DIR PORT ROOT_PEM NODE_CERT NODE_KEY CSR_PEM IDENTITY CHAIN_OUT
Prints "ISSUED <n>" (and writes the chain to CHAIN_OUT) or "REFUSED <code> <details>".
"""
import sys

import grpc
from google.protobuf import struct_pb2


def main(stubs, port, root, cert, key, csr, identity, chain_out):
    sys.path.insert(0, stubs)
    import ca_pb2
    import ca_pb2_grpc

    def read(path):
        with open(path, "rb") as f:
            return f.read()

    credentials = grpc.ssl_channel_credentials(
        root_certificates=read(root), private_key=read(key), certificate_chain=read(cert))
    # The serving certificate names "localhost"; dial the IPv4 loopback the CA listens on.
    options = [("grpc.ssl_target_name_override", "localhost")]
    with grpc.secure_channel(f"127.0.0.1:{port}", credentials, options) as channel:
        stub = ca_pb2_grpc.IstioCertificateServiceStub(channel)
        metadata = struct_pb2.Struct()
        metadata.update({"ImpersonatedIdentity": identity})
        request = ca_pb2.IstioCertificateRequest(
            csr=read(csr).decode(), validity_duration=3600, metadata=metadata)
        try:
            response = stub.CreateCertificate(request, timeout=30)
        except grpc.RpcError as e:
            print(f"REFUSED {e.code().name} {e.details()}", flush=True)
            return 0
    with open(chain_out, "w") as f:
        f.write("".join(response.cert_chain))
    print(f"ISSUED {len(response.cert_chain)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:9]))
