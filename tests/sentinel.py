"""A Redis Sentinel topology of real processes, for the tests and `make sentinel-demo`.

A master and its replicas configured like the stack's state Redis (noeviction, AOF everysec) and
Sentinels watching them (quorum: a majority), all under one directory and on the ports given, never
the stack's state Redis, run by tests/processes.py's Processes; Sentinel runs deploy/sentinel-notify
when a failover starts and deploy/sentinel-reconfig when it ends, as production does
(docs/operations.md, "Redis Sentinel").
"""

import redis

from resilience.sentinel import switchover

from .processes import Processes
from .stack import ROOT, wait_for

MASTER_NAME = "bulwark-state"
RECONFIG_SCRIPT = ROOT / "deploy" / "sentinel-reconfig"  # demotes a still-running old master at once
NOTIFY_SCRIPT = ROOT / "deploy" / "sentinel-notify"  # pauses the master's writes when a failover starts


def client(port: int, db: int = 0) -> redis.Redis:
    return redis.Redis(host="127.0.0.1", port=port, db=db, socket_timeout=0.5, socket_connect_timeout=0.5)


def role(port: int) -> dict:
    return client(port).info("replication")


class Topology:
    """A master, its replicas and the Sentinels that monitor them as MASTER_NAME (`redis_ports[0]` is
    the first master). The Sentinels choose each new master; `master` follows what they name."""

    def __init__(
        self, procs: Processes, *, redis_ports, sentinel_ports, down_after_ms: int = 5000, notify_script=NOTIFY_SCRIPT
    ):
        self.procs = procs
        self.redis_ports = list(redis_ports)
        self.sentinel_ports = list(sentinel_ports)
        self.quorum = len(self.sentinel_ports) // 2 + 1
        # Sentinel's verdict "subjectively down" after this long without an answer. 1 s was too short on
        # a loaded 2-core machine: a Sentinel took the master it had just promoted for down and failed
        # over a second time.
        self.down_after_ms = down_after_ms
        self.master = self.redis_ports[0]
        self.notify_script = notify_script

    @property
    def sentinels(self) -> str:
        """The Sentinels as REDIS_STATE_SENTINELS spells them."""
        return " ".join(f"127.0.0.1:{p}" for p in self.sentinel_ports)

    def others(self) -> list[int]:
        """The servers that are not the current master (its replicas, once they have rejoined)."""
        return [p for p in self.redis_ports if p != self.master]

    def start(self) -> None:
        """Start the master, its replicas (synced) and the Sentinels; return once each Sentinel sees all."""
        first, *replicas = self.redis_ports
        self.procs.start_redis(first, self.redis_command(first))
        for port in replicas:
            self.procs.start_redis(port, self.redis_command(port, replica_of=first))
            wait_for(
                lambda p=port: role(p).get("master_link_status") == "up",
                timeout=30,
                message=f"the replica :{port} to sync",
            )
        for port in self.sentinel_ports:
            self.procs.start_redis(port, self.sentinel_command(port, first))
        wait_for(
            lambda: self.ready(first, replicas),
            timeout=60,
            interval=0.2,
            message="the Sentinels to see the master, the replicas and each other",
        )

    def redis_command(self, port: int, replica_of: int | None = None) -> list[str]:
        data = self.procs.workdir / f"redis-{port}"
        data.mkdir(exist_ok=True)
        cmd = [
            "redis-server",
            *("--port", str(port), "--bind", "127.0.0.1", "--dir", str(data), "--save", ""),
            *("--appendonly", "yes", "--appendfsync", "everysec"),
            # A replica that followed the old master past the promotion needs a full resync from the new
            # one; Redis waits 5 s by default before starting it, and with WRITE_BEHIND_WAIT_REPLICAS=1
            # no view is confirmed until then (docs/operations.md, "Redis Sentinel").
            *("--repl-diskless-sync-delay", "0"),
            *("--maxmemory", "256mb", "--maxmemory-policy", "noeviction", "--logfile", str(data / "redis.log")),
        ]
        if replica_of:
            cmd += ["--replicaof", "127.0.0.1", str(replica_of)]
        return cmd

    def sentinel_command(self, port: int, master_port: int) -> list[str]:
        data = self.procs.workdir / f"sentinel-{port}"
        data.mkdir(exist_ok=True)
        conf = data / "sentinel.conf"  # Sentinel rewrites its own file: one per Sentinel
        conf.write_text(f"""port {port}
bind 127.0.0.1
dir {data}
logfile {data / "sentinel.log"}
sentinel resolve-hostnames no
sentinel monitor {MASTER_NAME} 127.0.0.1 {master_port} {self.quorum}
sentinel down-after-milliseconds {MASTER_NAME} {self.down_after_ms}
sentinel failover-timeout {MASTER_NAME} 10000
sentinel parallel-syncs {MASTER_NAME} 1
sentinel client-reconfig-script {MASTER_NAME} {RECONFIG_SCRIPT}
sentinel notification-script {MASTER_NAME} {self.notify_script}
""")
        return ["redis-server", str(conf), "--sentinel"]

    def masters_named(self) -> list[int | None]:
        """The master port each Sentinel gives for MASTER_NAME (None for a Sentinel that does not answer)."""
        answers = []
        for port in self.sentinel_ports:
            try:
                _host, master_port = client(port).sentinel_get_master_addr_by_name(MASTER_NAME)
                answers.append(int(master_port))
            except (redis.RedisError, TypeError):
                answers.append(None)
        return answers

    def ready(self, master_port: int, replica_ports) -> bool:
        """True when every Sentinel names `master_port`, knows every replica as up and sees the others."""
        for port in self.sentinel_ports:
            s = client(port)
            state = s.sentinel_master(MASTER_NAME)
            if int(state["port"]) != master_port or not state["is_master"] or state["is_sdown"]:
                return False
            if state["num-other-sentinels"] != len(self.sentinel_ports) - 1:
                return False
            linked = {
                int(r["port"])
                for r in s.sentinel_slaves(MASTER_NAME)
                if not r["is_sdown"] and r["master-link-status"] == "ok"
            }
            if not set(replica_ports) <= linked:
                return False
        return True

    def kill_master(self) -> None:
        """SIGKILL the current master, as a crash would."""
        self.procs.kill(f"redis-{self.master}")

    def sentinel_failover(self) -> None:
        """SENTINEL FAILOVER: a promotion while every server is up."""
        client(self.sentinel_ports[0]).execute_command("SENTINEL", "FAILOVER", MASTER_NAME)

    def switchover(self) -> None:
        """A planned switchover (resilience/sentinel.py, `manage.py state_switchover`): writes paused,
        replicas caught up, then SENTINEL FAILOVER."""
        switchover([("127.0.0.1", p) for p in self.sentinel_ports], MASTER_NAME)

    def promoted(self) -> int | None:
        """The new master's port once every Sentinel names the same one other than `master`, else None."""
        answers = self.masters_named()
        if answers[0] not in (None, self.master) and all(a == answers[0] for a in answers):
            return answers[0]
        return None

    def settle(self, timeout: float = 90) -> None:
        """Follow the Sentinels' choice of a new master; restart the old one if it was killed; return
        once it has rejoined as a replica and every Sentinel sees the topology whole again."""
        old = self.master
        self.master = wait_for(self.promoted, timeout=60, interval=0.02, message="the Sentinels to name a new master")
        if f"redis-{old}" not in self.procs.running:  # killed: it comes back from its AOF
            self.procs.start_redis(old, self.redis_command(old))
        wait_for(
            lambda: (
                (info := role(old))["role"] == "slave"
                and info.get("master_port") == self.master
                and info.get("master_link_status") == "up"
                and self.ready(self.master, self.others())
            ),
            timeout=timeout,
            interval=0.2,
            message=f":{old} to rejoin as a replica of :{self.master}",
        )
