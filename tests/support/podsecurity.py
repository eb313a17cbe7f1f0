"""The Pod Security Standards' "restricted" profile (its latest version), as a checker.

What the API server's Pod Security admission refuses in a namespace labelled
``pod-security.kubernetes.io/enforce: restricted``: the baseline controls (no host
namespaces, ports or paths, no privileged containers, only the baseline capabilities, no
unconfined seccomp, default /proc mount, only safe sysctls, restricted SELinux and
AppArmor options) plus the restricted ones (only the volume types listed below, no
privilege escalation, run as non-root and not as UID 0, seccomp RuntimeDefault or
Localhost, capabilities dropped to ALL with at most NET_BIND_SERVICE added). Kubernetes
admits no pod through a test of ours, so this reads the rules off the pod spec the way the
admission controller does: a field left unset counts where the rule says it may be unset.
"""

from __future__ import annotations

from typing import Any

RESTRICTED_VOLUMES = frozenset(
    {
        "configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
        "projected", "secret",
    }
)  # fmt: skip
SAFE_SYSCTLS = frozenset(
    {
        "kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range",
        "net.ipv4.ip_unprivileged_port_start", "net.ipv4.tcp_syncookies",
        "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
        "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout",
        "net.ipv4.tcp_keepalive_intvl", "net.ipv4.tcp_keepalive_probes",
    }
)  # fmt: skip
SELINUX_TYPES = frozenset({"", "container_t", "container_init_t", "container_kvm_t"})
SECCOMP_TYPES = frozenset({"RuntimeDefault", "Localhost"})


def restricted_violations(pod_spec: dict[str, Any]) -> list[str]:
    """Every way ``pod_spec`` breaks the restricted profile; empty when it meets it."""
    found: list[str] = []
    pod = pod_spec.get("securityContext") or {}
    containers = [
        *pod_spec.get("initContainers", []),
        *pod_spec.get("containers", []),
        *pod_spec.get("ephemeralContainers", []),
    ]
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if pod_spec.get(key):
            found.append(f"{key} is set")
    for volume in pod_spec.get("volumes", []):
        kinds = set(volume) - {"name"}
        if not kinds <= RESTRICTED_VOLUMES:
            found.append(f"volume {volume.get('name')} is of type {sorted(kinds)}")
    for sysctl in pod.get("sysctls", []):
        if sysctl.get("name") not in SAFE_SYSCTLS:
            found.append(f"sysctl {sysctl.get('name')} is not a safe one")
    found += _common(pod, "pod")
    pod_non_root = pod.get("runAsNonRoot") is True
    pod_seccomp = (pod.get("seccompProfile") or {}).get("type")
    if pod_seccomp is not None and pod_seccomp not in SECCOMP_TYPES:
        found.append(f"pod seccompProfile is {pod_seccomp}")
    for container in containers:
        name = f"container {container.get('name')}"
        context = container.get("securityContext") or {}
        found += _common(context, name)
        if context.get("privileged"):
            found.append(f"{name} is privileged")
        if context.get("allowPrivilegeEscalation") is not False:
            found.append(f"{name} does not set allowPrivilegeEscalation false")
        if context.get("runAsNonRoot") is False or not (
            pod_non_root or context.get("runAsNonRoot") is True
        ):
            found.append(f"{name} may run as root (runAsNonRoot)")
        seccomp = (context.get("seccompProfile") or {}).get("type")
        if seccomp is not None and seccomp not in SECCOMP_TYPES:
            found.append(f"{name} seccompProfile is {seccomp}")
        if seccomp is None and pod_seccomp is None:
            found.append(f"{name} has no seccompProfile (RuntimeDefault or Localhost)")
        capabilities = context.get("capabilities") or {}
        if "ALL" not in (capabilities.get("drop") or []):
            found.append(f"{name} does not drop ALL capabilities")
        added = set(capabilities.get("add") or []) - {"NET_BIND_SERVICE"}
        if added:
            found.append(f"{name} adds capabilities {sorted(added)}")
        if context.get("procMount", "Default") != "Default":
            found.append(f"{name} procMount is {context['procMount']}")
        for port in container.get("ports", []):
            if port.get("hostPort"):
                found.append(f"{name} uses host port {port['hostPort']}")
    return found


def _common(context: dict[str, Any], where: str) -> list[str]:
    """Rules that hold for the pod's and each container's security context alike."""
    found = []
    if context.get("runAsUser") == 0:
        found.append(f"{where} runs as UID 0")
    if (context.get("windowsOptions") or {}).get("hostProcess"):
        found.append(f"{where} is a Windows host process")
    selinux = context.get("seLinuxOptions") or {}
    if selinux.get("type", "") not in SELINUX_TYPES or selinux.get("user") or selinux.get("role"):
        found.append(f"{where} sets SELinux options beyond the allowed types")
    apparmor = (context.get("appArmorProfile") or {}).get("type")
    if apparmor is not None and apparmor not in SECCOMP_TYPES:
        found.append(f"{where} AppArmor profile is {apparmor}")
    return found
