#!/usr/bin/env bash
# Check that every metric a Grafana dashboard queries is one the gateway
# exports: a name from the Metrics table of README.md (a histogram as
# NAME_bucket, NAME_sum or NAME_count).
#
#   grafana/check-dashboard.sh [--readme README.md] [DASHBOARD.json ...]
#
# Without files it checks grafana/dashboards/*.json. It reads every query of
# every panel (rows and library panels included) and of the template
# variables, drops label matchers, ranges, strings, by/without/on/ignoring
# clauses, function names and Grafana variables, and takes what is left as
# metric names. Exit 0 if all are known, 1 if any is not (or a dashboard has
# no query at all), 2 on a usage or input error. Needs python3 (no modules
# beyond its standard library).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
readme="$(cd "$here/.." && pwd)/README.md"
files=()

while [[ $# -gt 0 ]]; do
    case $1 in
        --readme) [[ $# -ge 2 ]] || { echo "check-dashboard: --readme needs a file" >&2; exit 2; }
            readme=$2; shift 2 ;;
        -h | --help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        -*) echo "check-dashboard: unknown option $1" >&2; exit 2 ;;
        *) files+=("$1"); shift ;;
    esac
done
if ((${#files[@]} == 0)); then
    shopt -s nullglob
    files=("$here"/dashboards/*.json)
    shopt -u nullglob
    ((${#files[@]})) || { echo "check-dashboard: no dashboards in $here/dashboards" >&2; exit 2; }
fi
command -v python3 >/dev/null 2>&1 || { echo "check-dashboard: python3 is required" >&2; exit 2; }

exec python3 - "$readme" "${files[@]}" <<'PY'
import json
import re
import sys

readme_path, paths = sys.argv[1], sys.argv[2:]

# --- the Metrics table of README.md -------------------------------------------
try:
    readme = open(readme_path, encoding="utf-8").read()
except OSError as e:
    print(f"check-dashboard: cannot read {readme_path}: {e.strerror}", file=sys.stderr)
    sys.exit(2)

section = re.search(r"^## Metrics[ \t]*\n(.*?)(?=^## |\Z)", readme, re.M | re.S)
if not section:
    print(f"check-dashboard: no '## Metrics' section in {readme_path}", file=sys.stderr)
    sys.exit(2)
allowed = {}
for line in section.group(1).splitlines():
    m = re.match(r"\s*\|\s*`([A-Za-z_:][A-Za-z0-9_:]*)`\s*\|\s*([A-Za-z]+)\s*\|", line)
    if not m:
        continue
    name, kind = m.group(1), m.group(2).lower()
    if kind == "histogram":
        for suffix in ("_bucket", "_sum", "_count"):
            allowed[name + suffix] = name
    elif kind == "summary":
        for suffix in ("", "_sum", "_count"):
            allowed[name + suffix] = name
    else:
        allowed[name] = name
if not allowed:
    print(f"check-dashboard: the Metrics table of {readme_path} lists no metric", file=sys.stderr)
    sys.exit(2)

# --- PromQL -> metric names ---------------------------------------------------
KEYWORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool",
    "offset", "and", "or", "unless", "inf", "nan", "atan2",
}
STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
GRAFANA_VAR = re.compile(r"\$\{[^}]*\}|\$\w+|\[\[[^\]]*\]\]")
MATCHERS = re.compile(r"\{[^{}]*\}")
RANGES = re.compile(r"\[[^\[\]]*\]")
GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
IDENT = re.compile(r"(?<![\w.:])([A-Za-z_:][A-Za-z0-9_:]*)(\s*\()?")


def metric_names(expr):
    e = STRING.sub('""', expr)
    e = GRAFANA_VAR.sub("1", e)
    e = MATCHERS.sub("", e)
    e = RANGES.sub("", e)
    e = GROUPING.sub("", e)
    e = re.sub(r"#[^\n]*", "", e)  # PromQL comments
    names = []
    for m in IDENT.finditer(e):
        word, call = m.group(1), m.group(2)
        if call or word.lower() in KEYWORDS:
            continue
        names.append(word)
    return names


class Unsupported(Exception):
    pass


def variable_query_exprs(q):
    """The PromQL inside a Grafana Prometheus variable query."""
    if isinstance(q, dict):
        q = q.get("query", "")
    if not isinstance(q, str) or not q.strip():
        return []
    q = q.strip()
    m = re.fullmatch(r"label_values\(\s*(.*?)\s*,\s*[A-Za-z_][A-Za-z0-9_]*\s*\)", q, re.S)
    if m:
        return [m.group(1)]
    if re.fullmatch(r"label_values\(\s*[A-Za-z_][A-Za-z0-9_]*\s*\)|label_names\(\s*\)", q):
        return []
    m = re.fullmatch(r"query_result\((.*)\)", q, re.S)
    if m:
        return [m.group(1)]
    if q.startswith("metrics("):
        raise Unsupported(q)
    return [q]


def queries(node, where):
    """(location, expr) for every query in a dashboard JSON tree."""
    if isinstance(node, dict):
        if isinstance(node.get("expr"), str):
            yield where, node["expr"]
        if isinstance(node.get("title"), str) and node.get("type") not in (None, "row"):
            where = f'panel "{node["title"]}"'
        for key, value in node.items():
            if key == "templating" and isinstance(value, dict):
                for var in value.get("list", []):
                    if var.get("type") == "query":
                        for e in variable_query_exprs(var.get("query")):
                            yield f"variable ${var.get('name')}", e
                continue
            yield from queries(value, where)
    elif isinstance(node, list):
        for item in node:
            yield from queries(item, where)


status = 0
for path in paths:
    try:
        dash = json.load(open(path, encoding="utf-8"))
        found = list(queries(dash, "dashboard"))
    except (OSError, ValueError) as e:
        print(f"check-dashboard: {path}: {e}", file=sys.stderr)
        sys.exit(2)
    except Unsupported as e:
        print(f"{path}: variable query {e} cannot be checked; use label_values(metric, label)")
        status = 1
        continue
    if not found:
        print(f"{path}: no queries found")
        status = 1
        continue
    used, bad = set(), 0
    for where, expr in found:
        names = metric_names(expr)
        if not names:
            print(f"{path}: {where}: the query names no metric: {expr}")
            bad += 1
        for name in names:
            used.add(name)
            if name not in allowed:
                print(f"{path}: {where}: '{name}' is not in the Metrics table of {readme_path}")
                print(f"    {expr}")
                bad += 1
    if bad:
        status = 1
    else:
        print(f"{path}: ok: {len(found)} queries; metrics: {', '.join(sorted(used))}")
sys.exit(status)
PY
