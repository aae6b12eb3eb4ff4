#!/usr/bin/env bash
# Check docker-compose.yml without Docker: it parses, and its services, ports,
# environment, mounts and Prometheus scrape targets agree with pm/, grafana/
# and the README.
#
#   pm/check-compose.sh
#
# What it checks:
# - docker-compose.yml, pm/prometheus.yml and grafana/provisioning/*/*.yml parse
#   as YAML (merge keys included), and the dashboards as JSON;
# - the gateways (services built from this repository) are one cluster: each
#   has PUSHGATE_REDIS_URL pointing at the compose Redis service, the same
#   prefix, a unique PUSHGATE_NODE_ID equal to its service name, and exposes
#   the port of its PUSHGATE_LISTEN; API keys are set (HAProxy is not loopback);
#   its PUSHGATE_ADVERTISE_ADDR, when set, is its service name and that port
#   (the other gateways forward long-polling requests there);
# - HAProxy renders pm/haproxy.cfg.tmpl for exactly those gateways and ports,
#   with --api-keys-set, and (if haproxy is installed) `haproxy -c` accepts the
#   rendered config;
# - Prometheus mounts pm/prometheus.yml, which scrapes exactly those gateways
#   directly on /metrics; Grafana's datasource points at the Prometheus
#   service and its uid is the one the dashboards use; the dashboard provider
#   path and the home dashboard are where the dashboards are mounted;
# - the published ports are the ones README.md and pm/README.md announce;
# - no stale "until the Redis bus lands" or "sticky until issue 8" note is left
#   in the kit.
# One line per check; exit 0 if all pass, 1 if any fails. Needs python3 with
# PyYAML (Debian: python3-yaml).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
python3 -c 'import yaml' 2>/dev/null || { echo "check-compose: python3 with PyYAML is required (Debian: apt-get install python3-yaml)" >&2; exit 2; }

exec python3 - "$repo" <<'PY'
import glob, json, os, re, shlex, subprocess, sys, tempfile
import yaml

repo = sys.argv[1]
failures = 0

def check(ok, what, detail=""):
    global failures
    print(("ok     " if ok else "FAIL   ") + what + ("" if ok or not detail else f": {detail}"))
    if not ok:
        failures += 1
    return ok

def load_yaml(rel):
    with open(os.path.join(repo, rel), encoding="utf-8") as f:
        return yaml.safe_load(f)

def read(rel):
    with open(os.path.join(repo, rel), encoding="utf-8") as f:
        return f.read()

# --- parse ----------------------------------------------------------------------
parsed = {}
for rel in ["docker-compose.yml", "pm/prometheus.yml"] + sorted(
        os.path.relpath(p, repo) for p in glob.glob(os.path.join(repo, "grafana/provisioning/*/*.yml"))):
    try:
        parsed[rel] = load_yaml(rel)
        check(isinstance(parsed[rel], dict), f"{rel} parses as YAML")
    except Exception as e:  # yaml.YAMLError, OSError
        check(False, f"{rel} parses as YAML", str(e))
dashboards = {}
for p in sorted(glob.glob(os.path.join(repo, "grafana/dashboards/*.json"))):
    rel = os.path.relpath(p, repo)
    try:
        dashboards[rel] = json.load(open(p, encoding="utf-8"))
        check(True, f"{rel} parses as JSON")
    except ValueError as e:
        check(False, f"{rel} parses as JSON", str(e))
compose = parsed.get("docker-compose.yml")
if not isinstance(compose, dict):
    sys.exit(1)
services = compose.get("services", {})

def env_of(svc):
    env = svc.get("environment", {}) or {}
    if isinstance(env, list):
        env = dict(e.split("=", 1) if "=" in e else (e, None) for e in env)
    return env

def volumes_of(svc):
    out = {}
    for v in svc.get("volumes", []) or []:
        parts = v.split(":") if isinstance(v, str) else [v.get("source"), v.get("target")]
        out[os.path.normpath(os.path.join(repo, parts[0]))] = parts[1]
    return out

def published(svc):
    out = {}
    for p in svc.get("ports", []) or []:
        host, _, container = str(p).rpartition(":")
        out[int(container)] = int(host.rsplit(":", 1)[-1])
    return out

def default_value(v):
    """'${X:-dev-key}' -> 'dev-key' (what compose uses when X is unset)."""
    if isinstance(v, str):
        m = re.fullmatch(r"\$\{\w+:-([^}]*)\}", v)
        if m:
            return m.group(1)
    return v

# --- gateways: one cluster --------------------------------------------------------
gateways = {n: s for n, s in services.items() if s.get("build") in (".", "./") or s.get("image") == "pushgate:dev"}
check(len(gateways) >= 2, "compose runs several gateways", f"found {sorted(gateways)}")
redis_name = next((n for n, s in services.items() if str(s.get("image", "")).startswith("redis")), None)
check(redis_name is not None, "compose has a Redis service")
redis_cmd = services.get(redis_name, {}).get("command", [])
redis_cmd = shlex.split(redis_cmd) if isinstance(redis_cmd, str) else list(redis_cmd)
redis_port = int(redis_cmd[redis_cmd.index("--port") + 1]) if "--port" in redis_cmd else 6379
gw_addr = {}
urls, prefixes = set(), set()
for name, svc in sorted(gateways.items()):
    env = env_of(svc)
    url = env.get("PUSHGATE_REDIS_URL")
    urls.add(url)
    prefixes.add(env.get("PUSHGATE_REDIS_PREFIX", "pushgate"))
    check(url == f"redis://{redis_name}:{redis_port}", f"{name}: PUSHGATE_REDIS_URL is the compose Redis",
          f"got {url!r}, want 'redis://{redis_name}:{redis_port}'")
    deps = svc.get("depends_on", {})
    check(redis_name in deps, f"{name}: depends on {redis_name}")
    check(env.get("PUSHGATE_NODE_ID") == name, f"{name}: PUSHGATE_NODE_ID is the service name",
          f"got {env.get('PUSHGATE_NODE_ID')!r}")
    listen = env.get("PUSHGATE_LISTEN", "0.0.0.0:3000")
    host, _, port = listen.rpartition(":")
    check(host in ("0.0.0.0", "[::]", "::"), f"{name}: listens on all interfaces (other containers reach it)", listen)
    exposed = {int(str(p).split("/")[0]) for p in svc.get("expose", []) or []} | set(published(svc))
    check(int(port) in exposed, f"{name}: exposes its PUSHGATE_LISTEN port {port}", f"exposes {sorted(exposed)}")
    check(bool(default_value(env.get("PUSHGATE_API_KEYS"))), f"{name}: PUSHGATE_API_KEYS is set (HAProxy is not loopback to it)")
    advertise = env.get("PUSHGATE_ADVERTISE_ADDR")
    check(advertise in (None, f"{name}:{port}"), f"{name}: PUSHGATE_ADVERTISE_ADDR is where the other gateways reach it",
          f"got {advertise!r}, want {name}:{port!r} or unset")
    gw_addr[name] = f"{name}:{port}"
check(len(urls) == 1 and len(prefixes) == 1, "the gateways share one Redis URL and prefix", f"{urls} {prefixes}")
ids = [env_of(s).get("PUSHGATE_NODE_ID") for s in gateways.values()]
check(len(set(ids)) == len(ids), "node ids are unique", str(ids))

# --- HAProxy ------------------------------------------------------------------------
hap_name = next((n for n, s in services.items() if str(s.get("image", "")).startswith("haproxy")), None)
check(hap_name is not None, "compose has an HAProxy service")
hap = services.get(hap_name, {})
cmd = hap.get("command", [])
cmd = " ".join(cmd) if isinstance(cmd, list) else str(cmd)
args = shlex.split(cmd.split("&&")[0])
check("/pm/render-haproxy.sh" in args and volumes_of(hap).get(os.path.join(repo, "pm")) == "/pm",
      "HAProxy renders pm/haproxy.cfg.tmpl from ./pm mounted at /pm")
servers = args[args.index("--servers") + 1] if "--servers" in args else ""
rendered = dict(s.split("=", 1) for s in servers.split(",") if "=" in s)
check(rendered == gw_addr, "HAProxy's --servers are exactly the gateways and their ports",
      f"got {rendered}, want {gw_addr}")
check("--api-keys-set" in args, "HAProxy is rendered with --api-keys-set (the gateways have keys)")
lb_listen = args[args.index("--listen") + 1] if "--listen" in args else "0.0.0.0:3000"
lb_port = int(lb_listen.rpartition(":")[2])
lb_published = published(hap).get(lb_port)
check(lb_published is not None, f"HAProxy's listen port {lb_port} is published", str(published(hap)))
if subprocess.run(["sh", "-c", "command -v haproxy"], capture_output=True).returncode == 0:
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "haproxy.cfg")
        render = [os.path.join(repo, "pm/render-haproxy.sh")] + [
            a for a in args[args.index("/pm/render-haproxy.sh") + 1:]]
        render[render.index("--output") + 1] = out
        r = subprocess.run(render, capture_output=True, text=True)
        ok = r.returncode == 0
        if ok:
            r = subprocess.run(["haproxy", "-c", "-q", "-f", out], capture_output=True, text=True)
            ok = r.returncode == 0
        check(ok, "the compose HAProxy command renders a config `haproxy -c` accepts", (r.stderr or r.stdout).strip())
    # README "TLS at HAProxy": the same servers rendered with --tls-cert (a throwaway
    # self-signed certificate) is accepted, and README's snippet is what it renders.
    if subprocess.run(["sh", "-c", "command -v openssl"], capture_output=True).returncode == 0:
        with tempfile.TemporaryDirectory() as d:
            key, crt, pem = (os.path.join(d, n) for n in ("key.pem", "crt.pem", "tls.pem"))
            g = subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key,
                                "-out", crt, "-days", "1", "-subj", "/CN=localhost"], capture_output=True, text=True)
            ok = g.returncode == 0
            detail = g.stderr.strip()
            if ok:
                with open(pem, "w") as f:
                    f.write(open(crt).read() + open(key).read())
                out = os.path.join(d, "haproxy-tls.cfg")
                render = [os.path.join(repo, "pm/render-haproxy.sh"), "--servers", servers, "--api-keys-set",
                          "--tls-cert", pem, "--listen", "0.0.0.0:443", "--output", out]
                r = subprocess.run(render, capture_output=True, text=True)
                ok = r.returncode == 0
                if ok:
                    r = subprocess.run(["haproxy", "-c", "-q", "-f", out], capture_output=True, text=True)
                    ok = r.returncode == 0
                detail = (r.stderr or r.stdout).strip()
            check(ok, "HAProxy rendered with --tls-cert (README: TLS at HAProxy) passes `haproxy -c`", detail)
            if ok:
                rendered_tls = [l.rstrip() for l in open(out).read().replace(pem, "/etc/haproxy/certs/pushgate.pem").splitlines()]
                m = re.search(r"<!-- tls-snippet -->\s*```[a-z]*\n(.*?)```", read("README.md"), re.S)
                snippet = [l.rstrip() for l in (m.group(1).splitlines() if m else []) if l.strip() and l.strip() != "..."]
                missing = [l for l in snippet if l not in rendered_tls]
                check(bool(snippet) and not missing, "README's TLS snippet is what render-haproxy.sh --tls-cert renders",
                      "no snippet after <!-- tls-snippet -->" if not snippet else f"not rendered: {missing}")
    else:
        print("note   openssl is not installed: the TLS rendering was not checked")
else:
    print("note   haproxy is not installed: the rendered config was not checked with haproxy -c")

# --- Prometheus ---------------------------------------------------------------------
prom_name = next((n for n, s in services.items() if "prometheus" in str(s.get("image", ""))), None)
check(prom_name is not None, "compose has a Prometheus service")
prom = services.get(prom_name, {})
prom_cfg_path = volumes_of(prom).get(os.path.join(repo, "pm/prometheus.yml"))
check(prom_cfg_path is not None, "Prometheus mounts pm/prometheus.yml")
check(any(f"--config.file={prom_cfg_path}" == a for a in prom.get("command", [])),
      "Prometheus reads the mounted pm/prometheus.yml", f"mounted at {prom_cfg_path}")
promcfg = parsed.get("pm/prometheus.yml") or {}
targets, paths = set(), set()
for job in promcfg.get("scrape_configs", []):
    paths.add(job.get("metrics_path", "/metrics"))
    for sc in job.get("static_configs", []):
        targets.update(sc.get("targets", []))
check(targets == set(gw_addr.values()), "Prometheus scrapes every gateway directly, and only them",
      f"got {sorted(targets)}, want {sorted(gw_addr.values())}")
check(paths == {"/metrics"}, "Prometheus scrapes /metrics", str(paths))
prom_published = published(prom).get(9090)

# --- Grafana ------------------------------------------------------------------------
graf_name = next((n for n, s in services.items() if "grafana" in str(s.get("image", ""))), None)
check(graf_name is not None, "compose has a Grafana service")
graf = services.get(graf_name, {})
gvol = volumes_of(graf)
prov = gvol.get(os.path.join(repo, "grafana/provisioning"))
dash_dir = gvol.get(os.path.join(repo, "grafana/dashboards"))
check(prov == "/etc/grafana/provisioning", "Grafana mounts grafana/provisioning at /etc/grafana/provisioning", str(prov))
check(dash_dir is not None, "Grafana mounts grafana/dashboards")
ds_uids = set()
for rel, doc in parsed.items():
    if rel.startswith("grafana/provisioning/datasources/"):
        for ds in doc.get("datasources", []):
            ds_uids.add(ds.get("uid"))
            check(ds.get("url") == f"http://{prom_name}:9090", f"{rel}: datasource {ds.get('name')} is the Prometheus service",
                  f"got {ds.get('url')!r}")
    if rel.startswith("grafana/provisioning/dashboards/"):
        for p in doc.get("providers", []):
            check(p.get("options", {}).get("path") == dash_dir, f"{rel}: provider {p.get('name')} reads the mounted dashboards",
                  f"{p.get('options', {}).get('path')} vs {dash_dir}")
home = env_of(graf).get("GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH", "")
check(home.startswith(f"{dash_dir}/") and os.path.exists(os.path.join(repo, "grafana/dashboards", home[len(dash_dir) + 1:])),
      "Grafana's home dashboard is a file of grafana/dashboards", home)
def uids(node):
    if isinstance(node, dict):
        ds = node.get("datasource")
        if isinstance(ds, dict) and ds.get("type") == "prometheus":
            yield ds.get("uid")
        for v in node.values():
            yield from uids(v)
    elif isinstance(node, list):
        for v in node:
            yield from uids(v)
for rel, d in dashboards.items():
    used = set(uids(d))
    check(used <= ds_uids, f"{rel} uses the provisioned datasource uid", f"{used} vs {ds_uids}")
graf_published = published(graf).get(3000)

# --- what the READMEs announce ------------------------------------------------------
announced = {"HAProxy": lb_published, "Grafana": graf_published, "Prometheus": prom_published}
for rel in ["pm/README.md", "docker-compose.yml"]:
    text = read(rel)
    for what, port in announced.items():
        pat = {"HAProxy": r"(LB|clients \+ API)\D{0,40}:(\d+)", "Grafana": r"Grafana\D{0,40}:(\d+)",
               "Prometheus": r"Prometheus\D{0,40}:(\d+)"}[what]
        m = re.search(pat, text)
        got = int(m.groups()[-1]) if m else None
        check(got == port, f"{rel} announces {what} on the published port {port}", f"says {got}")
readme = read("README.md")
check("docker compose up" in readme, "README.md tells how to run the compose cluster")
m = re.search(r"docker compose up[^\n]*", read("pm/README.md"))
check(bool(m), "pm/README.md has the compose command")
keys = default_value(env_of(next(iter(gateways.values()))).get("PUSHGATE_API_KEYS"))
check(keys in read("pm/README.md") and keys in read("docker-compose.yml"),
      f"the default API key {keys!r} is the one pm/README.md announces")

# --- stale notes --------------------------------------------------------------------
stale = re.compile(r"until the Redis bus lands|once the Redis bus lands|needs the Redis\s+bus\)"
                   r"|no-sticky work|sticky .{0,40}(required|until)|stick-table", re.I)
for rel in ["README.md", "docker-compose.yml", "pm/README.md", "pm/ecosystem.config.js",
            "pm/dev-cluster.sh", "pm/haproxy.cfg.tmpl", "pm/render-haproxy.sh", "pm/pushgate@.service"]:
    hits = [i + 1 for i, line in enumerate(read(rel).splitlines()) if stale.search(line)]
    check(not hits, f"{rel} has no stale Redis-bus or stickiness note", f"lines {hits}")

print(f"check-compose: {'all checks pass' if not failures else f'{failures} check(s) failed'}")
sys.exit(1 if failures else 0)
PY
