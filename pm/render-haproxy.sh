#!/usr/bin/env bash
# Render pm/haproxy.cfg.tmpl for N pushgate gateways.
#
#   pm/render-haproxy.sh [-n N] [options] > haproxy.cfg
#
# Backends are 127.0.0.1:3001 .. 127.0.0.1:(3000+N) by default, named gw1..gwN.
# Options (each also an environment variable):
#   -n, --nodes N            number of gateways (PUSHGATE_NODES, default 3)
#   -p, --base-port PORT     port of gw1 (PUSHGATE_BASE_PORT, default 3001)
#   -H, --host HOST          address of every gateway (default 127.0.0.1)
#   -s, --servers LIST       explicit NAME=HOST:PORT,... instead of -n/-p/-H
#                            (e.g. gw1=gw1:3000,gw2=gw2:3000 in docker compose)
#   -l, --listen ADDR        HAProxy bind address (PUSHGATE_LB_LISTEN, default 0.0.0.0:3000)
#   -m, --maxconn N          global and frontend maxconn (PUSHGATE_LB_MAXCONN, default 100000)
#       --stats-socket PATH  add an admin stats socket (show stat, show servers state, ...)
#       --resolver IP:PORT   resolve gateway names at run time through this DNS
#                            server (docker: 127.0.0.11:53)
#       --api-keys-set       the gateways have PUSHGATE_API_KEYS: let /v1 through
#                            from anywhere (the gateways check the key). Without
#                            it, /v1 is answered 403 here for non-loopback callers.
#       --tls-cert PEM       terminate TLS here: clients use https:// and wss://, the
#                            gateways get plain HTTP with X-Forwarded-Proto: https.
#                            PEM holds the certificate chain and its private key.
#       --log-level LEVEL    HAProxy log level (default notice; info logs every request)
#   -o, --output FILE        write there instead of stdout
#   -t, --template FILE      template (default: haproxy.cfg.tmpl beside this script)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

nodes=${PUSHGATE_NODES:-3}
base_port=${PUSHGATE_BASE_PORT:-3001}
host=127.0.0.1
servers=""
listen=${PUSHGATE_LB_LISTEN:-0.0.0.0:3000}
maxconn=${PUSHGATE_LB_MAXCONN:-100000}
stats_socket=""
resolver=""
api_keys_set=0
tls_cert=""
log_level=notice
output=""
template="$here/haproxy.cfg.tmpl"

die() { echo "render-haproxy: $*" >&2; exit 2; }
need_arg() { [[ $# -ge 2 && -n $2 ]] || die "$1 needs a value"; }

while [[ $# -gt 0 ]]; do
    case $1 in
        -n | --nodes) need_arg "$@"; nodes=$2; shift 2 ;;
        -p | --base-port) need_arg "$@"; base_port=$2; shift 2 ;;
        -H | --host) need_arg "$@"; host=$2; shift 2 ;;
        -s | --servers) need_arg "$@"; servers=$2; shift 2 ;;
        -l | --listen) need_arg "$@"; listen=$2; shift 2 ;;
        -m | --maxconn) need_arg "$@"; maxconn=$2; shift 2 ;;
        --stats-socket) need_arg "$@"; stats_socket=$2; shift 2 ;;
        --resolver) need_arg "$@"; resolver=$2; shift 2 ;;
        --api-keys-set) api_keys_set=1; shift ;;
        --tls-cert) need_arg "$@"; tls_cert=$2; shift 2 ;;
        --log-level) need_arg "$@"; log_level=$2; shift 2 ;;
        -o | --output) need_arg "$@"; output=$2; shift 2 ;;
        -t | --template) need_arg "$@"; template=$2; shift 2 ;;
        -h | --help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument: $1 (try --help)" ;;
    esac
done

is_uint() { [[ $1 =~ ^[0-9]+$ ]]; }
if ! { is_uint "$maxconn" && ((maxconn > 0)); }; then die "--maxconn must be a positive integer, got '$maxconn'"; fi
[[ -r $template ]] || die "template not found: $template"
[[ $log_level =~ ^(emerg|alert|crit|err|warning|notice|info|debug)$ ]] || die "bad --log-level '$log_level'"
[[ $listen == *:* ]] || die "--listen must be ADDR:PORT (or :PORT), got '$listen'"

# names[i], addrs[i]: the gateways.
names=()
addrs=()
if [[ -n $servers ]]; then
    IFS=',' read -r -a specs <<<"$servers"
    for spec in "${specs[@]}"; do
        [[ $spec =~ ^([A-Za-z0-9_-]+)=([^=[:space:]]+:[0-9]+)$ ]] ||
            die "bad server '$spec' in --servers (want NAME=HOST:PORT)"
        names+=("${BASH_REMATCH[1]}")
        addrs+=("${BASH_REMATCH[2]}")
    done
else
    if ! { is_uint "$nodes" && ((nodes >= 1 && nodes <= 1000)); }; then
        die "--nodes must be 1..1000, got '$nodes'"
    fi
    if ! { is_uint "$base_port" && ((base_port >= 1 && base_port + nodes - 1 <= 65535)); }; then
        die "bad --base-port '$base_port' for $nodes nodes"
    fi
    for ((i = 1; i <= nodes; i++)); do
        names+=("gw$i")
        addrs+=("$host:$((base_port + i - 1))")
    done
fi
((${#names[@]} > 0)) || die "no gateways"

# Blocks that replace a line holding only @@NAME@@.
client_servers=""
api_servers=""
server_dns=""
[[ -n $resolver ]] && server_dns=" resolvers dns resolve-prefer ipv4"
for i in "${!names[@]}"; do
    id=$((i + 1))
    n=${names[$i]}
    a=${addrs[$i]}
    client_servers+="    server $n $a id $id check$server_dns"$'\n'
    api_servers+="    server $n $a id $id track be_clients/$n$server_dns"$'\n'
done

stats_block=""
[[ -n $stats_socket ]] && stats_block="    stats socket $stats_socket mode 600 level admin"

resolvers_block=""
if [[ -n $resolver ]]; then
    resolvers_block="resolvers dns
    nameserver dns1 $resolver
    accepted_payload_size 8192
    hold valid 10s
    hold other 5s
    hold refused 5s
    hold nx 5s
    hold timeout 5s"
fi

if ((api_keys_set)); then
    api_policy="    # --api-keys-set: the gateways check the bearer key of every /v1 call."
else
    api_policy="    http-request return status 403 content-type application/json string '{\"error\":{\"code\":\"forbidden\",\"message\":\"/v1 is served to loopback callers only (set PUSHGATE_API_KEYS and render with --api-keys-set)\"}}' if is_api !from_local"
fi

if [[ -n $tls_cert ]]; then
    [[ $tls_cert != *[[:space:]]* ]] || die "--tls-cert path must not contain spaces: '$tls_cert'"
    bind_options=" ssl crt $tls_cert alpn http/1.1"
    tls_rules="    # TLS ends here (--tls-cert): clients speak https:// and wss://; the gateways
    # behind get plain HTTP and learn the scheme from X-Forwarded-Proto.
    http-request set-header X-Forwarded-Proto https
    http-response set-header Strict-Transport-Security \"max-age=31536000\""
else
    bind_options=""
    tls_rules="    # Plain HTTP. Render with --tls-cert PEM to terminate TLS here (README: TLS)."
fi

# A gateway that is not up yet when HAProxy starts must not stop it.
server_init="init-addr last,libc,none"

render() {
    local line key
    while IFS= read -r line || [[ -n $line ]]; do
        key=${line//[[:space:]]/}
        case $key in
            @@CLIENT_SERVERS@@) printf '%s' "$client_servers" ;;
            @@API_SERVERS@@) printf '%s' "$api_servers" ;;
            @@STATS_SOCKET@@) if [[ -n $stats_block ]]; then printf '%s\n' "$stats_block"; fi ;;
            @@RESOLVERS@@) if [[ -n $resolvers_block ]]; then printf '%s\n' "$resolvers_block"; fi ;;
            @@API_POLICY@@) printf '%s\n' "$api_policy" ;;
            @@TLS_RULES@@) printf '%s\n' "$tls_rules" ;;
            *)
                line=${line//@@MAXCONN@@/$maxconn}
                line=${line//@@BIND@@/$listen$bind_options}
                line=${line//@@LOG_LEVEL@@/$log_level}
                line=${line//@@SERVER_INIT@@/$server_init}
                [[ $line != *@@*@@* ]] || die "unknown placeholder in template: $line"
                printf '%s\n' "$line"
                ;;
        esac
    done <"$template"
}

if [[ -n $output ]]; then
    tmp="$output.tmp.$$"
    trap 'rm -f "$tmp"' EXIT
    render >"$tmp"
    mv -f "$tmp" "$output"
    trap - EXIT
else
    render
fi
