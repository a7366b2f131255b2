"""Filters for the InfiniBand verification (tasks/verify.yml): ibstat's text as data.

ibstat prints one block per HCA, ``CA 'mlx5_0'``, and inside it one block per port,
``Port 1:``, with ``Key: value`` lines (State, Physical state, Rate, Link layer, ...).

>>> ports = bootgate_ibstat_ports('''CA 'mlx5_0'
... \\tCA type: MT4129
... \\tNumber of ports: 1
... \\tPort 1:
... \\t\\tState: Active
... \\t\\tPhysical state: LinkUp
... \\t\\tRate: 400
... \\t\\tPort GUID: 0x946dae0300d4f2a0
... \\t\\tLink layer: InfiniBand
... CA 'mlx5_1'
... \\tPort 1:
... \\t\\tState: Down
... \\t\\tPhysical state: Disabled
... \\t\\tRate: 2.5
... \\t\\tLink layer: InfiniBand
... ''')
>>> [(p["ca"], p["port"], p["state"], p["rate"], p["link_layer"]) for p in ports]
[('mlx5_0', 1, 'Active', 400, 'InfiniBand'), ('mlx5_1', 1, 'Down', 2.5, 'InfiniBand')]
>>> bootgate_ibstat_port_text(ports[1])
'mlx5_1 port 1 Down (Disabled) at 2.5 Gb/s'
>>> bootgate_ibstat_ports('')
[]
"""

import re

_CA = re.compile(r"^CA '([^']*)'")
_PORT = re.compile(r"^Port (\d+):$")
_FIELD = re.compile(r"^([A-Za-z][A-Za-z ]*):\s*(.*)$")


def _number(text):
    try:
        value = float(text)
    except ValueError:
        return text
    return int(value) if value.is_integer() else value


def bootgate_ibstat_ports(text):
    """Every port ibstat lists: ca, port, state, physical_state, rate (Gb/s), link_layer."""
    ports = []
    ca = ""
    port = None
    for raw in str(text).splitlines():
        line = raw.strip()
        m = _CA.match(line)
        if m:
            ca, port = m.group(1), None
            continue
        m = _PORT.match(line)
        if m:
            port = {"ca": ca, "port": int(m.group(1)), "state": "", "physical_state": "",
                    "rate": 0, "link_layer": ""}
            ports.append(port)
            continue
        m = _FIELD.match(line)
        if m and port is not None:
            key = m.group(1).lower().replace(" ", "_")
            if key in ("state", "physical_state", "link_layer"):
                port[key] = m.group(2).strip()
            elif key == "rate":
                port["rate"] = _number(m.group(2).strip())
    return ports


def bootgate_ibstat_port_text(port):
    """One port for an error message: `mlx5_3 port 1 Down (Polling) at 400 Gb/s`."""
    physical = f" ({port['physical_state']})" if port.get("physical_state") else ""
    return f"{port['ca']} port {port['port']} {port['state']}{physical} at {port['rate']} Gb/s"


class FilterModule:
    def filters(self):
        return {
            "bootgate_ibstat_ports": bootgate_ibstat_ports,
            "bootgate_ibstat_port_text": bootgate_ibstat_port_text,
        }
