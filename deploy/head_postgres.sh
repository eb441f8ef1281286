#!/usr/bin/env bash
# PostgreSQL on a cluster's head node for certstudy's records (ray_cluster.yaml runs it once per
# `ray up`): MLflow's tracking store and Optuna's storage, shared by every study driver.
#
# - The server listens on the head's private address only (no wildcard address) and admits the role
#   `certstudy` from the cluster's own subnet with scram-sha-256.
# - The password is read from ~/.certstudy/pg_password (synced by ray_cluster.yaml's file_mounts;
#   create it once with `python -c "import secrets; print(secrets.token_hex(32))"`). It never
#   appears on a command line or in the cluster YAML: psql reads it on standard input, and clients
#   (the MLflow server, the drivers) read it from ~/.pgpass.
set -euo pipefail
password_file="${CERTSTUDY_PG_PASSWORD_FILE:-$HOME/.certstudy/pg_password}"
[[ -s "$password_file" ]] || { echo "no password in $password_file" >&2; exit 1; }
password="$(tr -d '[:space:]' < "$password_file")"
[[ "$password" =~ ^[A-Za-z0-9]+$ ]] || { echo "$password_file: use letters and digits only (token_hex)" >&2; exit 1; }
private_ip="$(hostname -I | cut -d' ' -f1)"

if ! command -v psql > /dev/null; then
  sudo apt-get update -q
  sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql
fi
conf_dir="$(ls -d /etc/postgresql/*/main | sort -V | tail -1)"
sudo sed -i "s/^#\?listen_addresses\s*=.*/listen_addresses = '$private_ip'/" "$conf_dir/postgresql.conf"
rule="host all certstudy samenet scram-sha-256"
sudo grep -qxF "$rule" "$conf_dir/pg_hba.conf" || echo "$rule" | sudo tee -a "$conf_dir/pg_hba.conf" > /dev/null
sudo systemctl restart postgresql

here="$(cd "$(dirname "$0")" && pwd)"
{ printf "\\set pw '%s'\n" "$password"; cat "$here/postgres_setup.sql"; } | sudo -u postgres psql -q -d postgres

umask 077
printf '%s:5432:*:certstudy:%s\n' "$private_ip" "$password" > "$HOME/.pgpass"
echo "PostgreSQL for certstudy on $private_ip:5432 (databases mlflow, optuna; password in ~/.pgpass)"
