#!/usr/bin/env python3
"""Call a running repitd the way a third-party developer would: no generated code, only gRPC
server reflection to discover services and message types, then a dynamic call.

    python3 reflect_call.py 127.0.0.1:50051                      # list services and health
    python3 reflect_call.py 127.0.0.1:50051 repit.lesson.v1.LessonService/GetLesson '{"lesson_id": "..."}'
    python3 reflect_call.py --sign-up 127.0.0.1:50051 repit.lesson.v1.LessonService/ScheduleLesson '{"tutorId": "$USER_ID", ...}'

With --sign-up, a tutor signs up first (UserService/SignUpTutor, also found by reflection); the
call then carries their access token, and "$USER_ID" in the request stands for their user id.

Prints one JSON object: the services, the overall health, and the outcome of the call (if any).
"""
import json
import sys
import uuid

import grpc
from google.protobuf import descriptor_pool, json_format, message_factory
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)


def main() -> int:
    args = sys.argv[1:]
    sign_up = "--sign-up" in args
    args = [arg for arg in args if arg != "--sign-up"]
    address = args[0]
    channel = grpc.insecure_channel(address)
    grpc.channel_ready_future(channel).result(timeout=10)

    database = ProtoReflectionDescriptorDatabase(channel)
    services = sorted(database.get_services())
    health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
    result = {"services": services, "health": health_pb2.HealthCheckResponse.ServingStatus.Name(health.status)}
    pool = descriptor_pool.DescriptorPool(database)

    def call(method_path, body, metadata=()):
        service_name, method_name = method_path.split("/")
        method = pool.FindServiceByName(service_name).FindMethodByName(method_name)
        request_class = message_factory.GetMessageClass(method.input_type)
        response_class = message_factory.GetMessageClass(method.output_type)
        request = json_format.ParseDict(body, request_class())
        stub = channel.unary_unary(
            f"/{method_path}",
            request_serializer=request_class.SerializeToString,
            response_deserializer=response_class.FromString,
        )
        try:
            response = stub(request, timeout=5, metadata=metadata)
            return {"code": "OK", "response": json_format.MessageToDict(response)}
        except grpc.RpcError as error:
            return {"code": error.code().name, "message": error.details()}

    metadata = ()
    user_id = ""
    if sign_up:
        signed_up = call(
            "repit.user.v1.UserService/SignUpTutor",
            {
                "requestId": str(uuid.uuid4()),
                "emailPassword": {"email": f"py-{uuid.uuid4()}@example.test", "password": "correct horse battery staple"},
                "displayName": "Python Tutor",
                "timeZone": "Europe/Moscow",
            },
        )
        result["sign_up"] = signed_up["code"]
        if signed_up["code"] == "OK":
            user_id = signed_up["response"]["user"]["userId"]
            metadata = (("authorization", "Bearer " + signed_up["response"]["tokens"]["accessToken"]),)

    if len(args) >= 2:
        raw = args[2] if len(args) >= 3 else "{}"
        result["call"] = call(args[1], json.loads(raw.replace("$USER_ID", user_id)), metadata)

    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
