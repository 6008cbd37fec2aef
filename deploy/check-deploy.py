#!/usr/bin/python3
"""Checks the deployment files against each other and against the built binaries.

  deploy/check-deploy.py --server build/server/offsite-server --worker build/worker/offsite-worker
                         [--client build/client/offsite]

Static checks (always):
  - every Kubernetes YAML parses and has apiVersion, kind, metadata.name;
  - the StatefulSet: 1 replica, a governing Service, volumeClaimTemplates mounted at
    --data_dir, --tls_* files from a read-only Secret mount (listed in its items),
    --access_file from a ConfigMap/Secret (a ConfigMap here must hold a valid
    access file), startup/readiness/liveness probes, resources, non-root;
  - every --flag given to offsite-server (k8s args, Dockerfile CMD, systemd ExecStart
    and its environment file) is a flag of the built binary (`--helpfull`);
    the probes' flags are flags of deploy/grpc-health-check.py;
  - the container port == the Services' port == the --listen port == the probes' port;
  - the worker Deployment: every --flag is a flag of the built offsite-worker, the
    command is offsite-worker-launch (installed by the Dockerfile), --server names
    the server's Service and port, --ca/--cert/--key come from a read-only Secret
    mount, --work_dir is a writable mount, --rendezvous_address's port is a
    container port, the access ConfigMap lists a WORKER, resources, non-root;
  - the Dockerfile: Debian 12 stages, runs install-deps.sh and build.sh, its files
    exist, EXPOSE == the --listen port, VOLUME == --data_dir, non-root USER, an
    entrypoint that applies env.sh, the probe command and the worker installed;
  - the systemd units: User=, StateDirectory= == --data_dir (server) or --work_dir
    (worker), Restart=on-failure, KillSignal=SIGTERM, ExecStart through the env.sh
    launcher with flags of the right binary; `systemd-analyze verify` when present;
    `kubectl apply --dry-run=client` when it works offline.
Live checks (with --client): start the server through the launcher with the exact
flags of the StatefulSet, the Dockerfile CMD and the systemd unit (paths moved into
a temporary directory, port 0), run the manifest's health probe (needs
python3-grpcio; skipped with a note otherwise) and `offsite jobs list` as the owner,
then SIGTERM and expect a clean exit. With --worker too: start offsite-worker through
its launcher with the Deployment's flags against a live server (certificate of role
worker), wait until it serves, then SIGTERM and expect a clean exit.

Every failure names the file and the field. Exit 0 when all checks pass.
"""
import argparse
import glob
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time

try:
    import yaml
except ImportError:
    sys.exit("check-deploy: python3-yaml is missing (apt-get install python3-yaml)")

FAILURES = []


def fail(where, message):
    FAILURES.append(f"{where}: {message}")
    print(f"FAIL {where}: {message}", flush=True)


def note(message):
    print(f"NOTE {message}", flush=True)


def check(condition, where, message):
    if not condition:
        fail(where, message)
    return bool(condition)


# ---------------------------------------------------------------- flags


def binary_flags(binary, required=("listen", "data_dir")):
    """{flag: is_bool} from absl's --helpfull (which exits non-zero by design)."""
    out = subprocess.run([binary, "--helpfull"], capture_output=True, text=True, timeout=120)
    text = out.stdout + out.stderr
    flags = {}
    for m in re.finditer(r"^\s+--([A-Za-z0-9_]+) \((.*?)\);\s+default:\s*([^;]*);", text,
                         re.MULTILINE | re.DOTALL):
        flags[m.group(1)] = m.group(3).strip() in ("true", "false")
    if any(name not in flags for name in required):
        sys.exit(f"check-deploy: cannot read flags from `{binary} --helpfull`:\n{text[:2000]}")
    return flags


def script_flags(script):
    """{flag: is_bool} from an argparse script's --help."""
    out = subprocess.run([sys.executable, script, "--help"], capture_output=True, text=True,
                         timeout=60)
    if out.returncode != 0:
        sys.exit(f"check-deploy: `{script} --help` failed:\n{out.stderr}")
    flags = {}
    for m in re.finditer(r"^\s+(--[A-Za-z0-9_-]+)( [A-Z_]+)?", out.stdout, re.MULTILINE):
        flags[m.group(1)[2:]] = m.group(2) is None
    return flags


def parse_flags(tokens, known, where):
    """Parses --flag=value / --flag value / --boolflag; fails on unknown flags.

    Returns {flag: value}. Tokens that are not flags are failures too: absl
    treats them as positional arguments, which offsite-server ignores."""
    values = {}
    i = 0
    while i < len(tokens):
        token = tokens[i]
        i += 1
        if not token.startswith("--"):
            fail(where, f"argument {token!r} is not a --flag")
            continue
        name, eq, value = token[2:].partition("=")
        if name not in known:
            fail(where, f"--{name} is not a flag of the binary (known: {', '.join(sorted(known))})")
            continue
        if not eq:
            if known[name]:
                value = "true"
            elif i < len(tokens):
                value = tokens[i]
                i += 1
            else:
                fail(where, f"--{name} has no value")
        values[name] = value
    return values


def listen_port(flags, where):
    listen = flags.get("listen")
    if not check(listen, where, "no --listen (the default 127.0.0.1 is unreachable from outside)"):
        return None
    host, _, port = listen.rpartition(":")
    check(host not in ("127.0.0.1", "localhost", "[::1]"), where,
          f"--listen={listen} only accepts local connections")
    if not check(port.isdigit() and int(port) > 0, where, f"--listen={listen} has no fixed port"):
        return None
    return int(port)


def under(path, directory):
    return path == directory or path.startswith(directory.rstrip("/") + "/")


ACCESS_LINE = re.compile(r'^\s*principals\s*\{\s*name:\s*"[A-Za-z0-9._-]+"\s+'
                         r'role:\s*(OWNER|DATA_OWNER|WORKER)\s*\}\s*$')


def check_access_text(text, where):
    names = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.strip().startswith("#"):
            continue
        if check(ACCESS_LINE.match(line), where,
                 f"line {n} is not `principals {{ name: \"NAME\" role: OWNER|DATA_OWNER|WORKER }}`"):
            names.append(re.search(r'"(.*?)"', line).group(1))
    check(names, where, "the access file names no principal")
    check(len(names) == len(set(names)), where, "a principal is listed twice")


# ---------------------------------------------------------------- kubernetes


def load_k8s(k8s_dir):
    docs = []
    files = sorted(glob.glob(os.path.join(k8s_dir, "*.yaml")) +
                   glob.glob(os.path.join(k8s_dir, "*.yml")))
    check(files, k8s_dir, "no YAML files")
    for path in files:
        rel = os.path.relpath(path)
        try:
            loaded = [d for d in yaml.safe_load_all(open(path)) if d is not None]
        except yaml.YAMLError as e:
            fail(rel, f"YAML does not parse: {e}")
            continue
        for i, doc in enumerate(loaded):
            where = f"{rel}[{i}]"
            if not check(isinstance(doc, dict), where, "document is not a mapping"):
                continue
            for field in ("apiVersion", "kind"):
                check(isinstance(doc.get(field), str) and doc[field], where, f"missing {field}")
            check(isinstance(doc.get("metadata"), dict) and doc["metadata"].get("name"), where,
                  "missing metadata.name")
            docs.append((where, doc))
    return files, docs


def container_port(container, name_or_number):
    for p in container.get("ports", []):
        if name_or_number in (p.get("name"), p.get("containerPort")):
            return p.get("containerPort")
    return None


def check_statefulset(where, sts, docs, server_flags, probe_flags, dockerfile_text):
    """Returns (container, parsed flags) of the server container, for the live run."""
    spec = sts.get("spec", {})
    check(spec.get("replicas") == 1, where,
          "spec.replicas must be 1 (one server per data directory)")
    services = {d["metadata"]["name"]: (w, d) for w, d in docs if d.get("kind") == "Service"}
    governing = spec.get("serviceName")
    check(governing in services, where, f"spec.serviceName {governing!r} is not a Service here")
    pod = spec.get("template", {}).get("spec", {})
    labels = spec.get("template", {}).get("metadata", {}).get("labels", {})
    selector = spec.get("selector", {}).get("matchLabels", {})
    check(selector and all(labels.get(k) == v for k, v in selector.items()), where,
          "spec.selector.matchLabels does not match spec.template.metadata.labels")

    claims = [c.get("metadata", {}).get("name") for c in spec.get("volumeClaimTemplates") or []]
    check(claims, where, "spec.volumeClaimTemplates is empty (the data directory must persist)")
    for c in spec.get("volumeClaimTemplates") or []:
        check(c.get("spec", {}).get("resources", {}).get("requests", {}).get("storage"), where,
              f"volumeClaimTemplates[{c.get('metadata', {}).get('name')}] has no storage request")
    volumes = {v.get("name"): v for v in pod.get("volumes", [])}

    containers = pod.get("containers", [])
    if not check(len(containers) == 1, where, "expected one container (offsite-server)"):
        return None, None
    c = containers[0]
    cw = f"{where} container {c.get('name')}"
    check(c.get("image"), cw, "no image")
    check(not c.get("command"), cw,
          "command overrides the image entrypoint (which applies deploy/env.sh); use args")
    flags = parse_flags([str(a) for a in c.get("args", [])], server_flags, f"{cw} args")
    port = listen_port(flags, f"{cw} args")

    # Ports: container == --listen == every Service selecting the pod.
    cports = [p.get("containerPort") for p in c.get("ports", [])]
    check(port in cports, cw, f"ports {cports} do not include the --listen port {port}")
    selecting = [(w, s) for w, s in services.values()
                 if s.get("spec", {}).get("selector")
                 and all(labels.get(k) == v for k, v in s["spec"]["selector"].items())]
    check(any(s.get("spec", {}).get("type", "ClusterIP") == "ClusterIP"
              and s["spec"].get("clusterIP") != "None" for _, s in selecting),
          where, "no ClusterIP Service selects the pod")
    for sw, s in selecting:
        for sp in s.get("spec", {}).get("ports", []):
            target = sp.get("targetPort", sp.get("port"))
            check(sp.get("port") == port, sw, f"port {sp.get('port')} != --listen port {port}")
            check(container_port(c, target) == port, sw,
                  f"targetPort {target!r} is not the container port {port}")

    # Mounts.
    mounts = {m.get("mountPath"): m for m in c.get("volumeMounts", [])}

    def mount_of(path):
        best = None
        for mp in mounts:
            if mp and under(path, mp) and (best is None or len(mp) > len(best)):
                best = mp
        return best

    data_dir = flags.get("data_dir")
    if check(data_dir, f"{cw} args", "no --data_dir"):
        mp = mount_of(data_dir)
        check(mp == data_dir and mounts[mp].get("name") in claims, cw,
              f"--data_dir {data_dir} is not the mountPath of a volumeClaimTemplate")

    def check_file_from(path, flag, kinds):
        fw = f"{cw} {flag}"
        mp = mount_of(path)
        if not check(mp, fw, f"{path} is on no volumeMount"):
            return
        m = mounts[mp]
        check(m.get("readOnly") is True, fw, f"volumeMount {m.get('name')} is not readOnly")
        vol = volumes.get(m.get("name"), {})
        kind = next((k for k in kinds if k in vol), None)
        if not check(kind, fw, f"volume {m.get('name')} is not a {' or '.join(kinds)}"):
            return
        rel = os.path.relpath(path, mp)
        items = vol[kind].get("items")
        if items:
            check(any(it.get("path") == rel for it in items), fw,
                  f"{kind} volume {m.get('name')} has no item with path {rel}")
        if kind == "configMap":
            name = vol[kind].get("name")
            cms = [(w, d) for w, d in docs if d.get("kind") == "ConfigMap"
                   and d["metadata"].get("name") == name]
            if check(cms, fw, f"ConfigMap {name} is not in deploy/k8s"):
                key = next((it["key"] for it in items or [] if it.get("path") == rel), rel)
                data = cms[0][1].get("data", {})
                if check(key in data, cms[0][0], f"data has no key {key!r}") and flag == "--access_file":
                    check_access_text(data[key], f"{cms[0][0]} data.{key}")
        return kind

    for flag in ("tls_cert", "tls_key", "tls_ca"):
        if check(flag in flags, f"{cw} args", f"no --{flag} (certificates come from a Secret)"):
            check_file_from(flags[flag], f"--{flag}", ["secret"])
    if check("access_file" in flags, f"{cw} args", "no --access_file"):
        check_file_from(flags["access_file"], "--access_file", ["configMap", "secret"])

    # Probes: exec the health check over mTLS, on the server's port.
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        pw = f"{cw} {probe}"
        p = c.get(probe)
        if probe == "startupProbe" and p is None:
            continue
        if not check(isinstance(p, dict), cw, f"no {probe}"):
            continue
        check(p.get("timeoutSeconds", 1) >= 5, pw, "timeoutSeconds < 5 (the check runs a python process)")
        if "grpc" in p:
            fail(pw, "kubelet's grpc probe cannot present a client certificate (mTLS)")
            continue
        command = [str(x) for x in p.get("exec", {}).get("command", [])]
        if not check(command, pw, "no exec.command"):
            continue
        check(re.search(r"/" + re.escape(command[0]) + r"\b", dockerfile_text), pw,
              f"{command[0]} is not installed by deploy/Dockerfile")
        if command[0] == "offsite-health-check":
            check("python3-grpcio" in dockerfile_text, pw,
                  "deploy/Dockerfile does not install python3-grpcio for offsite-health-check")
        pf = parse_flags(command[1:], probe_flags, f"{pw} exec.command")
        addr = pf.get("addr", "")
        check(addr.rpartition(":")[2] == str(port), pw, f"--addr {addr!r} is not port {port}")
        if not pf.get("insecure"):
            for f in ("ca", "cert", "key"):
                if check(f in pf, pw, f"no --{f} (the server requires a client certificate)"):
                    check_file_from(pf[f], f"--{f}", ["secret"])

    # Resources and security.
    res = c.get("resources", {})
    for k in ("requests", "limits"):
        for r in ("cpu", "memory"):
            check(res.get(k, {}).get(r), cw, f"resources.{k}.{r} missing")
    cpu = str(res.get("limits", {}).get("cpu", ""))
    if cpu.isdigit() and flags.get("threads", "0").isdigit() and int(flags.get("threads", "0")):
        check(int(flags["threads"]) <= int(cpu), cw,
              f"--threads {flags['threads']} exceeds limits.cpu {cpu} (throttling)")
    psc, csc = pod.get("securityContext", {}), c.get("securityContext", {})
    check(csc.get("runAsNonRoot", psc.get("runAsNonRoot")) is True, cw, "runAsNonRoot is not true")
    check(csc.get("runAsUser", psc.get("runAsUser", 1)) != 0, cw, "runAsUser is 0")
    check(csc.get("allowPrivilegeEscalation") is False, cw,
          "securityContext.allowPrivilegeEscalation is not false")
    check(psc.get("fsGroup"), where, "securityContext.fsGroup missing (the volume must be writable)")
    return c, flags


def check_worker_deployment(where, dep, docs, worker_flags, dockerfile_text, server_port):
    """Returns (container, parsed flags) of the worker container, for the live run."""
    spec = dep.get("spec", {})
    pod = spec.get("template", {}).get("spec", {})
    labels = spec.get("template", {}).get("metadata", {}).get("labels", {})
    selector = spec.get("selector", {}).get("matchLabels", {})
    check(selector and all(labels.get(k) == v for k, v in selector.items()), where,
          "spec.selector.matchLabels does not match spec.template.metadata.labels")
    containers = pod.get("containers", [])
    if not check(len(containers) == 1, where, "expected one container (offsite-worker)"):
        return None, None
    c = containers[0]
    cw = f"{where} container {c.get('name')}"
    check(c.get("image"), cw, "no image")
    command = [str(x) for x in c.get("command") or []]
    if check(command and os.path.basename(command[0]) == "offsite-worker-launch", cw,
             "command is not offsite-worker-launch (which applies deploy/env.sh)"):
        check(re.search(r"/" + re.escape(os.path.basename(command[0])) + r"\b", dockerfile_text),
              cw, f"{command[0]} is not installed by deploy/Dockerfile")
    args = command[1:] + [str(a) for a in c.get("args", [])]
    flags = parse_flags(args, worker_flags, f"{cw} args")
    env = {e.get("name") for e in c.get("env", [])}
    for name, value in flags.items():
        for var in re.findall(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", value):
            check(var in env, cw, f"--{name} uses $({var}), which env does not define")

    services = {d["metadata"]["name"]: d for _, d in docs if d.get("kind") == "Service"}
    server = flags.get("server", "")
    host, _, port = server.rpartition(":")
    if check(server, f"{cw} args", "no --server"):
        service = host.split(".")[0]
        check(service in services and services[service].get("spec", {}).get("clusterIP") != "None",
              cw, f"--server {server}: {service!r} is not a ClusterIP Service in deploy/k8s")
        check(port == str(server_port), cw, f"--server {server} is not the server's port {server_port}")

    mounts = {m.get("mountPath"): m for m in c.get("volumeMounts", [])}
    volumes = {v.get("name"): v for v in pod.get("volumes", [])}

    def mount_of(path):
        best = None
        for mp in mounts:
            if mp and under(path, mp) and (best is None or len(mp) > len(best)):
                best = mp
        return best

    for flag in ("ca", "cert", "key"):
        if not check(flag in flags, f"{cw} args", f"no --{flag} (the server requires mTLS)"):
            continue
        path = flags[flag]
        mp = mount_of(path)
        if not check(mp, cw, f"--{flag} {path} is on no volumeMount"):
            continue
        check(mounts[mp].get("readOnly") is True, cw, f"volumeMount {mounts[mp].get('name')} is not readOnly")
        vol = volumes.get(mounts[mp].get("name"), {})
        if check("secret" in vol, cw, f"--{flag}: volume {mounts[mp].get('name')} is not a secret"):
            items = vol["secret"].get("items")
            rel = os.path.relpath(path, mp)
            if items:
                check(any(it.get("path") == rel for it in items), cw,
                      f"--{flag}: secret volume has no item with path {rel}")
    work = flags.get("work_dir")
    if check(work, f"{cw} args", "no --work_dir (the default is relative to a read-only root)"):
        mp = mount_of(work)
        check(mp and not mounts[mp].get("readOnly"), cw, f"--work_dir {work} is not on a writable mount")
    rendezvous = flags.get("rendezvous_address")
    if rendezvous:
        rport = rendezvous.rpartition(":")[2]
        check(rport.isdigit() and int(rport) in [p.get("containerPort") for p in c.get("ports", [])],
              cw, f"--rendezvous_address {rendezvous}: its port is not a containerPort")
    access = [d for _, d in docs if d.get("kind") == "ConfigMap"]
    check(any("role: WORKER" in str(v) for d in access for v in (d.get("data") or {}).values()),
          where, "no ConfigMap gives any principal role WORKER")

    res = c.get("resources", {})
    for k in ("requests", "limits"):
        for r in ("cpu", "memory"):
            check(res.get(k, {}).get(r), cw, f"resources.{k}.{r} missing")
    cpu = str(res.get("limits", {}).get("cpu", ""))
    if cpu.isdigit() and flags.get("threads", "0").isdigit():
        check(int(flags.get("threads", "1")) <= int(cpu), cw,
              f"--threads {flags.get('threads')} exceeds limits.cpu {cpu} (throttling)")
    psc, csc = pod.get("securityContext", {}), c.get("securityContext", {})
    check(csc.get("runAsNonRoot", psc.get("runAsNonRoot")) is True, cw, "runAsNonRoot is not true")
    check(csc.get("runAsUser", psc.get("runAsUser", 1)) != 0, cw, "runAsUser is 0")
    check(csc.get("allowPrivilegeEscalation") is False, cw,
          "securityContext.allowPrivilegeEscalation is not false")
    return c, flags


def check_k8s(repo, server_flags, probe_flags, dockerfile_text, worker_flags=None):
    files, docs = load_k8s(os.path.join(repo, "deploy/k8s"))
    kinds = [d["kind"] for _, d in docs]
    for required in ("StatefulSet", "Service", "ConfigMap"):
        check(required in kinds, "deploy/k8s", f"no {required}")
    for w, d in docs:
        if d["kind"] == "Service":
            for sp in d.get("spec", {}).get("ports", []):
                check(sp.get("port"), w, "a port without port:")
    result = (None, None)
    for w, d in docs:
        if d["kind"] == "StatefulSet":
            result = check_statefulset(w, d, docs, server_flags, probe_flags, dockerfile_text)
    server_port = result[1] and listen_port(result[1], "StatefulSet")
    worker = (None, None)
    for w, d in docs:
        if d["kind"] == "Deployment" and worker_flags is not None:
            worker = check_worker_deployment(w, d, docs, worker_flags, dockerfile_text, server_port)
    if worker_flags is not None:
        check(worker[0], "deploy/k8s", "no worker Deployment (offsite-worker)")
    kubectl = shutil.which("kubectl")
    if not kubectl:
        note("kubectl not on PATH: skipped `kubectl apply --dry-run=client`")
    else:
        out = subprocess.run([kubectl, "apply", "--dry-run=client", "--validate=false",
                              "--request-timeout=10s"] + sum((["-f", f] for f in files), []),
                             capture_output=True, text=True, timeout=120)
        text = out.stdout + out.stderr
        if out.returncode == 0:
            print("kubectl apply --dry-run=client:\n  " + out.stdout.strip().replace("\n", "\n  "))
        elif re.search(r"connection refused|dial tcp|no such host|couldn't get current server|"
                       r"the server could not find|Unable to connect|i/o timeout", text):
            note("kubectl apply --dry-run=client needs an API server (none reachable): skipped")
        else:
            fail("deploy/k8s", f"kubectl apply --dry-run=client failed:\n{text}")
    return docs, result, worker


# ---------------------------------------------------------------- Dockerfile


def dockerfile_instructions(path):
    lines, current = [], ""
    for raw in open(path):
        line = raw.rstrip("\n")
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.lstrip().startswith("#"):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        current += line
        word, _, rest = current.strip().partition(" ")
        lines.append((word.upper(), rest.strip()))
        current = ""
    return lines


def exec_form(value):
    value = value.strip()
    if value.startswith("["):
        import json
        return json.loads(value)
    return shlex.split(value)


def check_dockerfile(repo, server_flags):
    path = os.path.join(repo, "deploy/Dockerfile")
    rel = "deploy/Dockerfile"
    if not check(os.path.exists(path), rel, "missing"):
        return "", None, None
    text = open(path).read()
    ins = dockerfile_instructions(path)
    froms = [v for k, v in ins if k == "FROM"]
    check(froms, rel, "no FROM")
    for f in froms:
        image = f.split()[0]
        check(re.match(r"(docker\.io/(library/)?)?debian:bookworm(-slim)?(@|$)", image), rel,
              f"FROM {image} is not Debian 12 (debian:bookworm)")
    runs = " ".join(v for k, v in ins if k == "RUN")
    for script in ("deploy/install-deps.sh", "deploy/build.sh"):
        check(script in runs, rel, f"no RUN of {script}")
    for k, v in ins:
        if k in ("COPY", "ADD") and "--from=" not in v:
            for src in [s for s in v.split() if not s.startswith("--")][:-1]:
                check(src == "." or glob.glob(os.path.join(repo, src)), rel, f"{k} {src}: not in the repository")
    for m in re.finditer(r"\b(deploy/[A-Za-z0-9_./-]+)", text):
        check(os.path.exists(os.path.join(repo, m.group(1))), rel, f"{m.group(1)} does not exist")
    last = lambda key: next((v for k, v in reversed(ins) if k == key), None)
    entry, cmd, user = last("ENTRYPOINT"), last("CMD"), last("USER")
    check(user and user.split(":")[0] not in ("0", "root"), rel, "USER is root or missing")
    flags, port = {}, None
    if check(entry, rel, "no ENTRYPOINT"):
        entry = exec_form(entry)
        name = os.path.basename(entry[0])
        check(re.search(r"deploy/offsite-server-launch\.sh\s+\S*/" + re.escape(name) + r"\b", text),
              rel, f"ENTRYPOINT {entry[0]} is not deploy/offsite-server-launch.sh (which sources env.sh)")
        args = entry[1:] + (exec_form(cmd) if cmd else [])
        flags = parse_flags(args, server_flags, f"{rel} ENTRYPOINT+CMD")
        port = listen_port(flags, f"{rel} CMD")
    exposed = [int(p.split("/")[0]) for k, v in ins if k == "EXPOSE" for p in v.split()]
    check(port in exposed, rel, f"EXPOSE {exposed} does not include the --listen port {port}")
    vols = [x for k, v in ins if k == "VOLUME" for x in exec_form(v)]
    check(flags.get("data_dir") in vols, rel,
          f"VOLUME {vols} does not include --data_dir {flags.get('data_dir')}")
    check("env.sh" in text, rel, "does not install deploy/env.sh for the entrypoint")
    check(re.search(r"build/worker/offsite-worker\b", text), rel, "does not install offsite-worker")
    check(re.search(r"deploy/offsite-worker-launch\.sh\s+\S*/offsite-worker-launch\b", text), rel,
          "does not install deploy/offsite-worker-launch.sh as offsite-worker-launch")
    return text, flags, port


# ---------------------------------------------------------------- systemd


def read_unit(path):
    sections, section = {}, None
    for n, raw in enumerate(open(path), 1):
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = sections.setdefault(line[1:-1], {})
            continue
        key, eq, value = line.partition("=")
        if not eq or section is None:
            fail(os.path.relpath(path), f"line {n} is not KEY=VALUE in a section")
            continue
        section.setdefault(key.strip(), []).append(value.strip())
    return sections


def read_env_file(path):
    env = {}
    for raw in open(path):
        line = raw.strip()
        if line and not line.startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            env[key.strip()] = " ".join(shlex.split(value))
    return env


def check_systemd(repo, server_flags, worker_flags=None):
    """Returns (launcher, args) of the server unit."""
    units = sorted(glob.glob(os.path.join(repo, "deploy/systemd/*.service")))
    check(units, "deploy/systemd", "no .service file")
    launchers = {"offsite-server-launch": server_flags}
    if worker_flags is not None:
        launchers["offsite-worker-launch"] = worker_flags
        check(any(os.path.basename(u) == "offsite-worker.service" for u in units), "deploy/systemd",
              "no offsite-worker.service")
    result = None
    for path in units:
        rel = os.path.relpath(path, repo)
        unit = read_unit(path)
        svc = unit.get("Service", {})
        one = lambda key: (svc.get(key) or [None])[-1]
        check(one("User") and one("User") != "root", rel, "[Service] User= missing or root")
        check(one("Restart") == "on-failure", rel, "[Service] Restart= is not on-failure")
        check(one("KillSignal") in ("SIGTERM", "TERM", "15"), rel,
              "[Service] KillSignal= is not SIGTERM (the server requeues jobs on SIGTERM)")
        check(one("TimeoutStopSec"), rel, "[Service] TimeoutStopSec= missing")
        check(unit.get("Install", {}).get("WantedBy"), rel, "[Install] WantedBy= missing")
        state = one("StateDirectory")
        check(state, rel, "[Service] StateDirectory= missing")
        exec_start = one("ExecStart")
        if not check(exec_start, rel, "[Service] ExecStart= missing"):
            continue
        argv = shlex.split(exec_start.lstrip("-@+!:"))
        launcher_name = os.path.basename(argv[0])
        if not check(launcher_name in launchers, rel,
                     f"ExecStart does not run {' or '.join(launchers)} (which source env.sh)"):
            continue
        is_worker = launcher_name == "offsite-worker-launch"
        # Expand $VAR / ${VAR} from the EnvironmentFile shipped beside the unit.
        env = {}
        for envfile in svc.get("EnvironmentFile", []):
            shipped = os.path.join(os.path.dirname(path),
                                   os.path.basename(path).replace(".service", ".env"))
            if os.path.exists(shipped):
                env.update(read_env_file(shipped))
            else:
                check(envfile.startswith("-"), rel, f"EnvironmentFile={envfile} is not shipped or optional")
        args = []
        for token in argv[1:]:
            m = re.fullmatch(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?", token)
            if m:
                check(m.group(1) in env, rel, f"ExecStart uses ${m.group(1)}, not set in the env file")
                args += env.get(m.group(1), "").split()
            else:
                args.append(token)
        env_name = os.path.basename(path).replace(".service", ".env")
        flags = parse_flags(args, launchers[launcher_name],
                            f"{rel} ExecStart (with $VARs from {env_name})")
        if is_worker:
            for flag in ("server", "ca", "cert", "key"):
                check(flag in flags, rel, f"ExecStart has no --{flag}")
            if state:
                check(flags.get("work_dir") == "/var/lib/" + state.split()[0], rel,
                      f"--work_dir {flags.get('work_dir')} is not StateDirectory /var/lib/{state}")
        else:
            listen_port(flags, f"{rel} ExecStart")
            if state:
                check(flags.get("data_dir") == "/var/lib/" + state.split()[0], rel,
                      f"--data_dir {flags.get('data_dir')} is not StateDirectory /var/lib/{state}")
        analyze = shutil.which("systemd-analyze")
        if analyze:
            with tempfile.TemporaryDirectory() as tmp:
                copy = os.path.join(tmp, os.path.basename(path))
                launcher = os.path.join(repo, f"deploy/{launcher_name}.sh")
                open(copy, "w").write(open(path).read().replace(argv[0], launcher))
                out = subprocess.run([analyze, "verify", copy], capture_output=True, text=True,
                                     timeout=60)
                text = (out.stdout + out.stderr).strip()
                check(out.returncode == 0 and not text, rel, f"systemd-analyze verify:\n{text}")
        else:
            note("systemd-analyze not on PATH: skipped unit verification")
        if not is_worker:
            result = (argv[0], args)
    return result


# ---------------------------------------------------------------- live runs


def start_server(repo, server, args, workdir, label):
    env = dict(os.environ, OFFSITE_SERVER_BIN=server,
               OFFSITE_ENV_SH=os.path.join(repo, "deploy/env.sh"))
    port_file = os.path.join(workdir, "port")
    log = open(os.path.join(workdir, "server.log"), "w")
    launcher = os.path.join(repo, "deploy/offsite-server-launch.sh")
    proc = subprocess.Popen([launcher] + args + ["--port_file", port_file], env=env,
                            stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and not os.path.exists(port_file):
        time.sleep(0.1)
    if not os.path.exists(port_file):
        proc.kill()
        proc.wait()
        fail(label, "the server did not start:\n" + open(log.name).read())
        return None, None
    print(f"  {label}: serving after {time.time() - deadline + 120:.1f} s")
    return proc, int(open(port_file).read())


def stop_server(proc, workdir, label):
    start = time.time()
    proc.send_signal(signal.SIGTERM)
    try:
        rc = proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        rc = "timeout"
    log = open(os.path.join(workdir, "server.log")).read()
    print(f"  {label}: stopped by SIGTERM after {time.time() - start:.1f} s, exit status {rc}")
    check(rc == 0, label, f"SIGTERM: exit status {rc}, expected 0:\n{log}")
    check("requeued" in log, label, "no graceful-stop line after SIGTERM in the log")


def remap(flags, moves, port_file_dir):
    """flags -> argv with listen on a free loopback port and paths moved under a temp dir."""
    out = []
    for name, value in flags.items():
        if name == "listen":
            value = "127.0.0.1:0"
        for old in sorted(moves, key=len, reverse=True):
            if under(value, old):
                value = moves[old] + value[len(old):]
                break
        out.append(f"--{name}={value}")
    return out


def client_ok(client, port, certs_dir, label):
    env = dict(os.environ, OFFSITE_SERVER=f"127.0.0.1:{port}", OFFSITE_CERTS_DIR=certs_dir,
               OFFSITE_IDENTITY="owner")
    out = subprocess.run([client, "jobs", "list"], env=env, capture_output=True, text=True,
                         timeout=60)
    if out.returncode == 0:
        print(f"  {label}: `offsite jobs list` as owner: ok")
    check(out.returncode == 0, label,
          f"`offsite jobs list` as owner failed ({out.returncode}): {out.stdout}{out.stderr}")


def health_ok(repo, command, moves, port, label):
    try:
        import grpc  # noqa: F401
    except ImportError:
        note(f"{label}: python3-grpcio missing, health probe not run "
             "(the image installs it; apt-get install python3-grpcio)")
        return
    argv = [sys.executable, os.path.join(repo, "deploy/grpc-health-check.py")]
    for token in command[1:]:
        if token.startswith("--addr"):
            token = f"--addr=127.0.0.1:{port}"
        name, eq, value = token.partition("=")
        for old in sorted(moves, key=len, reverse=True):
            if eq and under(value, old):
                token = name + "=" + moves[old] + value[len(old):]
                break
        argv.append(token)
    out = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    check(out.returncode == 0, label, f"health probe failed: {out.stdout}{out.stderr}")
    if out.returncode == 0:
        print(f"  {label}: {out.stdout.strip()}")


def live_k8s(repo, server, client, sts_container, flags, docs, tmp):
    label = "live run of deploy/k8s StatefulSet args"
    mounts = {m["name"]: m["mountPath"] for m in sts_container.get("volumeMounts", [])}
    moves = {path: os.path.join(tmp, name) for name, path in mounts.items()}
    tls = moves[next(p for p in mounts.values() if under(flags["tls_ca"], p))]
    for cmd in (["certs", "init", "--dir", tls], ["certs", "issue", "--dir", tls, "--name", "probe"]):
        out = subprocess.run([client] + cmd, capture_output=True, text=True, timeout=60)
        if not check(out.returncode == 0, label, f"offsite {' '.join(cmd)}: {out.stderr}"):
            return
    # The manifest's file names inside the Secret / ConfigMap mounts.
    access_dst = remap({"x": flags["access_file"]}, moves, tmp)[0].split("=", 1)[1]
    os.makedirs(os.path.dirname(access_dst), exist_ok=True)
    cm = next(d for _, d in docs if d["kind"] == "ConfigMap")
    open(access_dst, "w").write(next(iter(cm["data"].values())))
    for name in ("tls_cert", "tls_key", "tls_ca"):
        dst = remap({"x": flags[name]}, moves, tmp)[0].split("=", 1)[1]
        check(os.path.exists(dst), label,
              f"--{name}: {os.path.basename(dst)} is not a file name that `offsite certs init` writes")
    proc, port = start_server(repo, server, remap(flags, moves, tmp), tmp, label)
    if not proc:
        return
    try:
        health_ok(repo, [str(x) for x in sts_container["livenessProbe"]["exec"]["command"]],
                  moves, port, label)
        client_ok(client, port, tls, label)
    finally:
        stop_server(proc, tmp, label)


def live_plain(repo, server, client, flags, tmp, label):
    """Dockerfile CMD / systemd ExecStart: certificates made by the server on first start."""
    moves = {flags["data_dir"]: os.path.join(tmp, "data")}
    proc, port = start_server(repo, server, remap(flags, moves, tmp), tmp, label)
    if not proc:
        return
    try:
        certs = os.path.join(tmp, "data", "certs")
        health_ok(repo, ["x", "--addr=", "--ca=" + os.path.join(certs, "ca.pem"),
                         "--cert=" + os.path.join(certs, "owner.pem"),
                         "--key=" + os.path.join(certs, "owner.key")], {}, port, label)
        client_ok(client, port, certs, label)
    finally:
        stop_server(proc, tmp, label)


def live_worker(repo, server, client, worker, container, flags, tmp):
    """The worker Deployment's flags against a live server: it must serve and stop cleanly."""
    label = "live run of deploy/k8s worker Deployment args"
    data = os.path.join(tmp, "data")
    proc, port = start_server(repo, server, ["--listen=127.0.0.1:0", f"--data_dir={data}",
                                             "--workers=0"], tmp, label)
    if not proc:
        return
    log_path = os.path.join(tmp, "worker.log")
    worker_proc = None
    try:
        certs = os.path.join(data, "certs")
        mounts = {m["name"]: m["mountPath"] for m in container.get("volumeMounts", [])}
        moves = {path: os.path.join(tmp, "mnt-" + name) for name, path in mounts.items()}
        # The Secret's files, made by `offsite certs issue` with the server's CA.
        name = os.path.splitext(os.path.basename(flags["cert"]))[0]
        out = subprocess.run([client, "certs", "issue", "--dir", certs, "--name", name, "--role",
                              "worker"], capture_output=True, text=True, timeout=60)
        if not check(out.returncode == 0, label, f"offsite certs issue: {out.stderr}"):
            return
        args = []
        for key, value in flags.items():
            value = re.sub(r"\$\(POD_NAME\)", "worker-0", value)
            value = re.sub(r"\$\(POD_IP\)", "127.0.0.1", value)
            if key == "server":
                value = f"127.0.0.1:{port}"
            elif key in ("ca", "cert", "key"):
                value = os.path.join(certs, os.path.basename(value))
            else:
                for old in sorted(moves, key=len, reverse=True):
                    if under(value, old):
                        value = moves[old] + value[len(old):]
                        break
            args.append(f"--{key}={value}")
        env = dict(os.environ, OFFSITE_WORKER_BIN=worker,
                   OFFSITE_ENV_SH=os.path.join(repo, "deploy/env.sh"))
        log = open(log_path, "w")
        worker_proc = subprocess.Popen([os.path.join(repo, "deploy/offsite-worker-launch.sh")] + args,
                                       env=env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.time() + 60
        while time.time() < deadline and worker_proc.poll() is None and \
                "serving" not in open(log_path).read():
            time.sleep(0.1)
        text = open(log_path).read()
        if check("serving" in text and worker_proc.poll() is None, label,
                 f"offsite-worker did not start:\n{text}"):
            time.sleep(1.5)  # at least one Lease round trip
            text = open(log_path).read()
            check("PERMISSION_DENIED" not in text and "UNAVAILABLE" not in text, label,
                  f"offsite-worker cannot lease:\n{text}")
            print(f"  {label}: offsite-worker serving")
            worker_proc.send_signal(signal.SIGTERM)
            try:
                rc = worker_proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                rc = "timeout"
            check(rc == 0, label, f"offsite-worker SIGTERM: exit status {rc}:\n{open(log_path).read()}")
            print(f"  {label}: offsite-worker stopped by SIGTERM, exit status {rc}")
    finally:
        if worker_proc and worker_proc.poll() is None:
            worker_proc.kill()
            worker_proc.wait()
        stop_server(proc, tmp, label)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", required=True, help="the built offsite-server")
    parser.add_argument("--worker", help="the built offsite-worker: checks its deployment files")
    parser.add_argument("--client", help="the built offsite client: enables the live runs")
    parser.add_argument("--repo", default=os.path.join(os.path.dirname(__file__), ".."))
    args = parser.parse_args()
    repo = os.path.abspath(args.repo)
    os.chdir(repo)

    server_flags = binary_flags(args.server)
    probe_flags = script_flags(os.path.join(repo, "deploy/grpc-health-check.py"))
    print(f"offsite-server flags: {', '.join(sorted(server_flags))}")
    worker_flags = None
    if args.worker:
        worker_flags = binary_flags(args.worker, required=("server", "work_dir"))
        print(f"offsite-worker flags: {', '.join(sorted(worker_flags))}")
    else:
        note("no --worker: the worker's deployment files are not checked")

    docker_text, docker_flags, _ = check_dockerfile(repo, server_flags)
    docs, (sts_container, sts_flags), (worker_container, worker_args) = check_k8s(
        repo, server_flags, probe_flags, docker_text, worker_flags)
    systemd = check_systemd(repo, server_flags, worker_flags)
    print(f"static checks: {len(FAILURES)} failure(s)")

    if args.client and not FAILURES:
        with tempfile.TemporaryDirectory(prefix="offsite-deploy-") as tmp:
            if sts_container:
                os.makedirs(os.path.join(tmp, "k8s"))
                live_k8s(repo, args.server, args.client, sts_container, sts_flags, docs,
                         os.path.join(tmp, "k8s"))
            if docker_flags:
                os.makedirs(os.path.join(tmp, "docker"))
                live_plain(repo, args.server, args.client, docker_flags,
                           os.path.join(tmp, "docker"), "live run of deploy/Dockerfile CMD")
            if systemd:
                os.makedirs(os.path.join(tmp, "systemd"))
                flags = parse_flags(systemd[1], server_flags, "systemd")
                live_plain(repo, args.server, args.client, flags, os.path.join(tmp, "systemd"),
                           "live run of deploy/systemd ExecStart")
            if worker_container and args.worker:
                os.makedirs(os.path.join(tmp, "worker"))
                live_worker(repo, args.server, args.client, args.worker, worker_container,
                            worker_args, os.path.join(tmp, "worker"))
    elif not args.client:
        note("no --client: live runs skipped")

    if FAILURES:
        print(f"\ncheck-deploy: {len(FAILURES)} failure(s):")
        for f in FAILURES:
            print(f"  {f}")
        return 1
    print("check-deploy: all deployment checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
