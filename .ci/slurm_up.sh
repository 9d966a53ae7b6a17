#!/usr/bin/env bash
# Start a one-node Slurm cluster with accounting (slurmctld, slurmd, munged, slurmdbd + MariaDB) on this
# machine, for the Slurm tests and for trying mae_zoo's Slurm paths locally. Needs root (apt-get, /etc/slurm).
# Idempotent: packages are installed only when missing; a cluster that already answers `sinfo` is left alone.
# Every daemon runs in the foreground under this script's control; its PID goes to $SLURM_CI_DIR/<name>.pid
# and .ci/slurm_down.sh stops exactly those PIDs.
#   SLURM_CI_DIR         state, logs and PID files (default /tmp/slurm-ci)
#   SLURM_CI_ACCOUNTING  1 (default): slurmdbd + MariaDB, so `sacct` works (submitit needs it to notice lost jobs)
#   SLURM_CI_CPUS        CPUs the node advertises (default 4: lets 2 two-rank DDP jobs or 4 array tasks share 2 cores)
# Every call that waits on a daemon has a timeout, so a broken install fails instead of hanging CI.
set -euo pipefail
D=${SLURM_CI_DIR:-/tmp/slurm-ci}; ACCT=${SLURM_CI_ACCOUNTING:-1}
mkdir -p "$D"
t0=$(date +%s.%N)
log() { echo "slurm_up: $*" >&2; }
wait_for() { local t=$1; shift; local end=$((SECONDS + t))
             while [ $SECONDS -lt $end ]; do timeout 10 "$@" >/dev/null 2>&1 && return 0; sleep 0.25; done
             log "timeout after ${t}s: $*"; return 1; }
alive() { [ -e "$D/$1.pid" ] && kill -0 "$(cat "$D/$1.pid")" 2>/dev/null; }
start() { local n=$1; shift; if alive "$n"; then log "$n already running (pid $(cat "$D/$n.pid"))"; return 0; fi
          "$@" >"$D/$n.out" 2>&1 & echo $! >"$D/$n.pid"; }

if [ "$(id -u)" != 0 ]; then log "needs root (apt-get, /etc/slurm, daemons)"; exit 1; fi
if command -v sinfo >/dev/null && timeout 5 sinfo -h -o %T 2>/dev/null | grep -qx idle && alive slurmctld; then
  log "cluster already up ($(timeout 5 sinfo -h -o '%P %D %T' | head -1))"; exit 0
fi

pkgs="slurmctld slurmd slurm-client munge"; [ "$ACCT" = 1 ] && pkgs="$pkgs slurmdbd mariadb-server mariadb-client"
need=0; for p in $pkgs; do dpkg -s "$p" >/dev/null 2>&1 || need=1; done
if [ $need = 1 ]; then
  log "installing $pkgs"
  timeout 600 apt-get update -qq >"$D/apt.log" 2>&1
  DEBIAN_FRONTEND=noninteractive timeout 900 apt-get install -y -qq --no-install-recommends $pkgs >>"$D/apt.log" 2>&1 \
    || { tail -20 "$D/apt.log" >&2; exit 1; }
fi

CPUS=${SLURM_CI_CPUS:-4}   # may exceed nproc thanks to SlurmdParameters=config_overrides
MEM=$(awk '/MemTotal/{print int($2/1024*0.85)}' /proc/meminfo)
mkdir -p /etc/slurm "$D/ctld" "$D/slurmd" /run/munge
cat >/etc/slurm/slurm.conf <<CONF
# written by mae_zoo .ci/slurm_up.sh
ClusterName=ci
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=cred_expire=10
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/$([ "$ACCT" = 1 ] && echo linux || echo none)
AccountingStorageType=accounting_storage/$([ "$ACCT" = 1 ] && echo slurmdbd || echo none)
AccountingStorageHost=localhost
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1024
SchedulerType=sched/backfill
SchedulerParameters=bf_interval=2,sched_interval=2
ReturnToService=2
PropagatePrioProcess=1	# tasks keep the nice value of sbatch/srun: `nice -n 15 sbatch ...` stays nice
SlurmdParameters=config_overrides
StateSaveLocation=$D/ctld
SlurmdSpoolDir=$D/slurmd
SlurmctldPidFile=$D/slurmctld.pidfile
SlurmdPidFile=$D/slurmd.pidfile
SlurmctldLogFile=$D/slurmctld.log
SlurmdLogFile=$D/slurmd.log
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
MinJobAge=300
KillWait=10
Waittime=0
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
CONF

[ -s /etc/munge/munge.key ] || runuser -u munge -- mungekey -c
chown munge:munge /run/munge /etc/munge/munge.key && chmod 0755 /run/munge && chmod 0400 /etc/munge/munge.key
start munged setpriv --reuid=munge --regid=munge --init-groups /usr/sbin/munged -F
wait_for 20 sh -c 'munge -n | unmunge'

if [ "$ACCT" = 1 ]; then
  mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld
  start mariadbd /usr/sbin/mariadbd --user=mysql --skip-networking --innodb-buffer-pool-size=64M
  wait_for 60 mariadb -e 'select 1'
  timeout 30 mariadb -e "CREATE DATABASE IF NOT EXISTS slurm_acct_db; CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurm-ci';
              GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';"
  cat >/etc/slurm/slurmdbd.conf <<CONF
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
SlurmUser=root
LogFile=$D/slurmdbd.log
PidFile=$D/slurmdbd.pidfile
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=slurm-ci
StorageLoc=slurm_acct_db
CONF
  chmod 600 /etc/slurm/slurmdbd.conf
  start slurmdbd /usr/sbin/slurmdbd -D
  wait_for 60 sacctmgr -n show cluster
  timeout 30 sacctmgr -i add cluster ci >/dev/null 2>&1 || true
fi

start slurmctld /usr/sbin/slurmctld -D -i
start slurmd /usr/sbin/slurmd -D -N localhost
if ! wait_for 60 sh -c 'sinfo -h -o %T | grep -qx idle'; then
  timeout 10 sinfo >&2 || true; tail -5 "$D/slurmctld.log" "$D/slurmd.log" >&2 || true; exit 1
fi
log "up in $(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}') s: $(timeout 10 sinfo -h -o '%P %D %T %c CPUs')"
