#!/usr/bin/env node
// RepitBot as a browser frontend meets it: Connect-ES with its gRPC-web transport (HTTP/1.1, the
// wire format browsers can speak), no generated code — the service descriptors come from the
// compiled descriptor set that repitd also serves by reflection.
//
//   node grpc_web_client.mjs <base url> <descriptor set .bin> <origin>
//
// Signs a tutor up, reads the current user with the token, checks that a call without a token is
// refused, schedules a lesson, reads the first message of a server stream (WatchSchedule), and
// sends a CORS preflight as a browser would for origin <origin>. Prints one JSON object.
import { randomUUID } from "node:crypto";
import { readFileSync } from "node:fs";

import { createFileRegistry, fromBinary } from "@bufbuild/protobuf";
import { FileDescriptorSetSchema } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-node";

const [baseUrl, descriptorPath, origin] = process.argv.slice(2);
const registry = createFileRegistry(fromBinary(FileDescriptorSetSchema, readFileSync(descriptorPath)));
const transport = createGrpcWebTransport({ baseUrl, httpVersion: "1.1" });
const users = createClient(registry.getService("repit.user.v1.UserService"), transport);
const lessons = createClient(registry.getService("repit.lesson.v1.LessonService"), transport);

const codeName = (error) => Code[ConnectError.from(error).code];
const result = {};

const signedUp = await users.signUpTutor({
  requestId: randomUUID(),
  credentials: {
    case: "emailPassword",
    value: { email: `web-${randomUUID()}@example.test`, password: "correct horse battery staple" },
  },
  displayName: "Web Tutor",
  timeZone: "Europe/Moscow",
  clientName: "gRPC-web test",
});
const signedIn = { headers: { authorization: `Bearer ${signedUp.tokens.accessToken}` } };
result.signUp = "OK";

const me = await users.getCurrentUser({}, signedIn);
result.currentUser = me.user.displayName;

try {
  await lessons.listLessons({});
  result.withoutToken = "OK";
} catch (error) {
  result.withoutToken = codeName(error);
}

const start = BigInt(Math.floor(Date.now() / 1000) + 3 * 86400);
const scheduled = await lessons.scheduleLesson(
  {
    tutorId: me.user.userId,
    studentId: randomUUID(),
    startTime: { seconds: start },
    duration: { seconds: 3600n },
    timeZone: "Europe/Moscow",
    subject: "Физика",
  },
  signedIn,
);
result.scheduled = scheduled.lesson.subject;

// A server stream through gRPC-web: the first message of a schedule watch is its snapshot.
const abort = new AbortController();
const watch = lessons.watchSchedule(
  {
    scope: { scope: { case: "tutorId", value: me.user.userId } },
    timeRange: { start: { seconds: start - 86400n }, end: { seconds: start + 86400n } },
    timeZone: "Europe/Moscow",
  },
  { ...signedIn, signal: abort.signal, timeoutMs: 10000 },
);
for await (const message of watch) {
  result.watchFirst = message.update.case;
  break;
}
abort.abort();

const preflight = await fetch(new URL("/repit.user.v1.UserService/GetCurrentUser", baseUrl), {
  method: "OPTIONS",
  headers: {
    Origin: origin,
    "Access-Control-Request-Method": "POST",
    "Access-Control-Request-Headers": "authorization,content-type,x-grpc-web,x-user-agent",
  },
});
result.preflight = {
  status: preflight.status,
  allowOrigin: preflight.headers.get("access-control-allow-origin"),
  allowHeaders: (preflight.headers.get("access-control-allow-headers") ?? "").toLowerCase(),
};

console.log(JSON.stringify(result));
