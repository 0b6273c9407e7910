"""KServe v2 / Open Inference Protocol gRPC frontend (``auditgate serve --grpc-port N``).

The protocol definitions are the ones ``tritonclient[grpc]`` ships
(``tritonclient.grpc.service_pb2`` / ``service_pb2_grpc``); install the ``grpc`` extra.
"""

from auditgate.grpc.server import GrpcFrontend
from auditgate.grpc.service import InferenceServicer, status_code_for

__all__ = ["GrpcFrontend", "InferenceServicer", "status_code_for"]
