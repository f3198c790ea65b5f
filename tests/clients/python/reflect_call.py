#!/usr/bin/env python3
"""Call a running repitd the way a third-party developer would: no generated code, only gRPC
server reflection to discover services and message types, then a dynamic call.

    python3 reflect_call.py 127.0.0.1:50051                      # list services and health
    python3 reflect_call.py 127.0.0.1:50051 repit.lesson.v1.LessonService/GetLesson '{"lesson_id": "..."}'

Prints one JSON object: the services, the overall health, and the outcome of the call (if any).
"""
import json
import sys

import grpc
from google.protobuf import descriptor_pool, json_format, message_factory
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)


def main() -> int:
    address = sys.argv[1]
    channel = grpc.insecure_channel(address)
    grpc.channel_ready_future(channel).result(timeout=10)

    database = ProtoReflectionDescriptorDatabase(channel)
    services = sorted(database.get_services())
    health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
    result = {"services": services, "health": health_pb2.HealthCheckResponse.ServingStatus.Name(health.status)}

    if len(sys.argv) >= 3:
        method_path = sys.argv[2]
        body = json.loads(sys.argv[3]) if len(sys.argv) >= 4 else {}
        service_name, method_name = method_path.split("/")
        pool = descriptor_pool.DescriptorPool(database)
        method = pool.FindServiceByName(service_name).FindMethodByName(method_name)
        request_class = message_factory.GetMessageClass(method.input_type)
        response_class = message_factory.GetMessageClass(method.output_type)
        request = json_format.ParseDict(body, request_class())
        call = channel.unary_unary(
            f"/{method_path}",
            request_serializer=request_class.SerializeToString,
            response_deserializer=response_class.FromString,
        )
        try:
            response = call(request, timeout=5)
            result["call"] = {"code": "OK", "response": json_format.MessageToDict(response)}
        except grpc.RpcError as error:
            result["call"] = {"code": error.code().name, "message": error.details()}

    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
