#!/usr/bin/env bash
# A single-node Slurm cluster on this machine, for the `slurm` tests (make test-slurm) and for trying
# the Slurm launcher presets before using a real cluster.
#
#   experiments/slurm/local_cluster.sh start    # install (Debian slurm-wlm, munge, slurmdbd, MariaDB) when
#                                               # missing, configure, start, wait until the node is idle
#   experiments/slurm/local_cluster.sh status   # daemons and `sinfo`
#   experiments/slurm/local_cluster.sh stop     # stop the daemons by their own pid files
#
# Needs root (apt-get, daemons). State, spool, logs, the accounting database and the job-completion log
# live under $DINOTRACKER_SLURM_DIR (default /tmp/dinotracker-slurm); the configs are written to
# /etc/slurm/slurm.conf and slurmdbd.conf (where every Slurm command looks for them) and removed again by
# `stop` when they are ours.
# Accounting: slurmdbd on a private MariaDB (datadir under $DIR, 127.0.0.1:$DB_PORT only, no grant tables:
# a throw-away test database), so `sacct` gives State/Elapsed/MaxRSS as on a real cluster, and submitit's
# job watcher (which polls sacct) sees a job end even when it dies without a result file.
# DINOTRACKER_SLURM_ACCOUNTING=0 runs without it: then the job-completion log ($DIR/jobcomp.txt) and
# `scontrol show job` (MinJobAge=3600) are what dinotracker.utils.slurm can read.
# Idempotent: `start` on a running cluster only waits for the node to be idle; `stop` twice is fine.
set -euo pipefail

DIR=${DINOTRACKER_SLURM_DIR:-/tmp/dinotracker-slurm}
CONF=/etc/slurm/slurm.conf
DBD_CONF=/etc/slurm/slurmdbd.conf
MARK="# written by dinotracker experiments/slurm/local_cluster.sh"
HOST=$(hostname -s)
PARTITION=${DINOTRACKER_SLURM_PARTITION:-debug}
ACCOUNTING=${DINOTRACKER_SLURM_ACCOUNTING:-1}
DB_PORT=${DINOTRACKER_SLURM_DB_PORT:-33061}

log() { echo "local_cluster: $*" >&2; }

alive() {  # alive PIDFILE: the process named in the pid file runs
  [[ -s $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null
}

install() {
  local pkgs=(slurm-wlm munge) have=1
  { command -v slurmctld && command -v slurmd && command -v munged && command -v sbatch; } >/dev/null || have=0
  if [[ $ACCOUNTING == 1 ]]; then
    pkgs+=(slurmdbd mariadb-server)
    { command -v slurmdbd && command -v mariadbd; } >/dev/null || have=0
  fi
  [[ $have == 1 ]] && return
  [[ $(id -u) == 0 ]] || { log "error: ${pkgs[*]} are not installed and installing needs root"; exit 1; }
  log "installing ${pkgs[*]} (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq "${pkgs[@]}" >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq "${pkgs[@]}"; }
}

ours_or_absent() {
  if [[ -f $1 ]] && ! grep -qF "$MARK" "$1"; then
    log "error: $1 exists and was not written by this script; not touching it"
    exit 1
  fi
}

write_conf() {
  local cpus mem acct
  cpus=$(nproc)
  # what slurmd will see, less 1 GiB for the system
  mem=$(slurmd -C | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p')
  mem=$(( mem > 2048 ? mem - 1024 : mem ))
  ours_or_absent "$CONF"
  ours_or_absent "$DBD_CONF"
  mkdir -p /etc/slurm "$DIR"/{state,spool,log}
  if [[ $ACCOUNTING == 1 ]]; then
    acct=$'AccountingStorageType=accounting_storage/slurmdbd\nAccountingStorageHost=localhost'
  else
    acct="AccountingStorageType=accounting_storage/none"
  fi
  cat >"$CONF" <<EOF
$MARK
ClusterName=dinotracker
SlurmctldHost=$HOST
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
MpiDefault=none
ReturnToService=2
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=task=2
$acct
JobCompType=jobcomp/filetxt
JobCompLoc=$DIR/jobcomp.txt
MinJobAge=3600
KillWait=30
InactiveLimit=0
SlurmctldTimeout=60
SlurmdTimeout=60
NodeName=$HOST CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=$PARTITION Nodes=$HOST Default=YES MaxTime=INFINITE State=UP DefMemPerCPU=2048
EOF
  if [[ $ACCOUNTING == 1 ]]; then
    cat >"$DBD_CONF" <<EOF
$MARK
AuthType=auth/munge
DbdHost=localhost
SlurmUser=root
PidFile=$DIR/slurmdbd.pid
LogFile=$DIR/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=root
StorageLoc=slurm_acct_db
EOF
    chmod 600 "$DBD_CONF"
  fi
}

start_munge() {
  if alive "$DIR/munged.pid" && munge -n </dev/null | unmunge >/dev/null 2>&1; then
    return
  fi
  mkdir -p /run/munge /var/lib/munge /var/log/munge
  if [[ ! -s /etc/munge/munge.key ]]; then
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
  fi
  chown munge:munge /etc/munge/munge.key /run/munge /var/lib/munge /var/log/munge
  chmod 0400 /etc/munge/munge.key
  chmod 0755 /run/munge
  touch "$DIR/munged.pid" "$DIR/log/munged.log"
  chown munge:munge "$DIR/munged.pid" "$DIR/log/munged.log"
  runuser -u munge -- munged --pid-file="$DIR/munged.pid" --log-file="$DIR/log/munged.log" \
    --seed-file=/var/lib/munge/munged.seed
  for _ in $(seq 50); do munge -n </dev/null | unmunge >/dev/null 2>&1 && return; sleep 0.2; done
  log "error: munged did not answer; see $DIR/log/munged.log"
  exit 1
}

start_db() {  # MariaDB for slurmdbd: private datadir, loopback only, small buffers
  local db=$DIR/mysql
  alive "$DIR/mariadb.pid" && return
  if [[ ! -d $db/mysql ]]; then
    mkdir -p "$db"
    mariadb-install-db --no-defaults --user=root --datadir="$db" >"$DIR/log/mariadb-install.log" 2>&1
  fi
  (setsid mariadbd --no-defaults --user=root --datadir="$db" --bind-address=127.0.0.1 --port="$DB_PORT" \
    --socket="$DIR/mariadb.sock" --pid-file="$DIR/mariadb.pid" --log-error="$DIR/log/mariadb.log" \
    --skip-grant-tables --innodb-buffer-pool-size=32M --max-connections=50 </dev/null >/dev/null 2>&1 &)
  for _ in $(seq 120); do
    [[ -S $DIR/mariadb.sock ]] && alive "$DIR/mariadb.pid" && return
    sleep 0.5
  done
  log "error: MariaDB did not start; see $DIR/log/mariadb.log"
  exit 1
}

start_dbd() {
  alive "$DIR/slurmdbd.pid" || slurmdbd
  for _ in $(seq 120); do sacctmgr -n -P list cluster >/dev/null 2>&1 && return; sleep 0.5; done
  log "error: slurmdbd did not answer; see $DIR/log/slurmdbd.log"
  exit 1
}

node_state() { sinfo -h -n "$HOST" -o %T 2>/dev/null | head -1; }

start() {
  install
  mkdir -p "$DIR"
  write_conf
  start_munge
  if [[ $ACCOUNTING == 1 ]]; then start_db; start_dbd; fi
  alive "$DIR/slurmctld.pid" || slurmctld
  alive "$DIR/slurmd.pid" || slurmd
  local state=""
  for _ in $(seq 120); do
    state=$(node_state)
    case $state in
      idle|mixed|allocated) log "node $HOST $state (partition $PARTITION, config $CONF, state $DIR)"; return ;;
      down*|drain*) scontrol update nodename="$HOST" state=resume >/dev/null 2>&1 || true ;;
    esac
    sleep 0.5
  done
  log "error: node $HOST not idle after 60 s (state '${state}'); logs in $DIR/log"
  exit 1
}

stop_one() {  # stop_one NAME PIDFILE
  local pid
  alive "$2" || { rm -f "$2"; return; }
  pid=$(cat "$2")
  kill "$pid"
  for _ in $(seq 200); do kill -0 "$pid" 2>/dev/null || { rm -f "$2"; return; }; sleep 0.1; done
  log "$1 (pid $pid) ignored SIGTERM for 20 s: SIGKILL"
  kill -9 "$pid" 2>/dev/null || true
  rm -f "$2"
}

stop() {
  # jobs first, so that no job step outlives its slurmd
  if alive "$DIR/slurmctld.pid"; then scancel --full --user="$(id -un)" 2>/dev/null || true; sleep 1; fi
  stop_one slurmd "$DIR/slurmd.pid"
  stop_one slurmctld "$DIR/slurmctld.pid"
  stop_one slurmdbd "$DIR/slurmdbd.pid"
  stop_one mariadb "$DIR/mariadb.pid"
  stop_one munged "$DIR/munged.pid"
  for f in "$CONF" "$DBD_CONF"; do
    if [[ -f $f ]] && grep -qF "$MARK" "$f"; then rm -f "$f"; fi
  done
  log "stopped"
}

status() {
  local rc=0 daemons=(munged slurmctld slurmd)
  [[ $ACCOUNTING == 1 ]] && daemons=(munged mariadb slurmdbd slurmctld slurmd)
  for d in "${daemons[@]}"; do
    if alive "$DIR/$d.pid"; then echo "$d: running (pid $(cat "$DIR/$d.pid"))"; else echo "$d: stopped"; rc=1; fi
  done
  sinfo 2>&1 || rc=1
  return $rc
}

case ${1:-} in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
