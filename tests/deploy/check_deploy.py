#!/usr/bin/env python3
"""Validates deploy/ without a Docker engine or a cluster (neither runs on CI machines):
every YAML file parses, every file a manifest points at exists, the Dockerfile builds and runs the
`repitd` package, and `kubectl kustomize` renders each kustomization when kubectl is installed.
Exits non-zero with one line per problem."""
import pathlib
import shutil
import subprocess
import sys

import yaml

root = pathlib.Path(__file__).resolve().parents[2]
deploy = root / "deploy"
problems = []

for path in sorted(deploy.rglob("*.y*ml")):
    try:
        documents = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    except yaml.YAMLError as error:
        problems.append(f"{path.relative_to(root)}: invalid YAML: {error}")
        continue
    for document in documents:
        if path.name == "kustomization.yaml":
            for resource in document.get("resources", []):
                if not (path.parent / resource).exists():
                    problems.append(f"{path.relative_to(root)}: resource {resource} does not exist")
            if shutil.which("kubectl"):
                rendered = subprocess.run(["kubectl", "kustomize", str(path.parent)], capture_output=True, text=True)
                if rendered.returncode != 0:
                    problems.append(f"{path.relative_to(root)}: kubectl kustomize failed: {rendered.stderr.strip()}")
        if "services" in document and path.name.startswith("docker-compose"):
            for name, service in document["services"].items():
                build = service.get("build")
                if build:
                    context = (path.parent / build.get("context", ".")).resolve()
                    dockerfile = context / build.get("dockerfile", "Dockerfile")
                    if not dockerfile.exists():
                        problems.append(f"{path.relative_to(root)}: service {name}: {dockerfile} does not exist")

dockerfile = (deploy / "Dockerfile").read_text()
if "-p repitd" not in dockerfile or 'ENTRYPOINT ["/usr/local/bin/repitd"]' not in dockerfile:
    problems.append("deploy/Dockerfile: must build the repitd package and run it as the entrypoint")

for problem in problems:
    print(problem)
print(f"deploy: {'FAILED' if problems else 'ok'} ({len(list(deploy.rglob('*')))} files checked)")
sys.exit(1 if problems else 0)
