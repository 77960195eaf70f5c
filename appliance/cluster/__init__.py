"""Hosts and clusters: inventory, SSH executor, playbooks, hardware facts, Kubernetes."""

from appliance.cluster.events import ProgressEvent, ProgressLog
from appliance.cluster.facts import catalog_id, node_labels
from appliance.cluster.inventory import Host, HostInput
from appliance.cluster.playbook import Playbook, list_playbooks, load_playbook
from appliance.cluster.runner import HostResult, InstallRecord, get_install, list_installs
from appliance.cluster.service import AddHostResult, EngineHostResult, HostService
from appliance.cluster.ssh import (
    AuthFailed,
    HostKeyChanged,
    HostKeyUnknown,
    HostUnreachable,
    SshError,
)

__all__ = [
    "AddHostResult",
    "AuthFailed",
    "EngineHostResult",
    "Host",
    "HostInput",
    "HostKeyChanged",
    "HostKeyUnknown",
    "HostResult",
    "HostService",
    "HostUnreachable",
    "InstallRecord",
    "Playbook",
    "ProgressEvent",
    "ProgressLog",
    "SshError",
    "catalog_id",
    "get_install",
    "list_installs",
    "list_playbooks",
    "load_playbook",
    "node_labels",
]
