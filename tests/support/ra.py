#!/usr/bin/env python3
"""Answer IPv6 Router Solicitations with an *empty* Router Advertisement (stdlib only).

Why: Debian's iPXE (1.0.0+git-20190125) runs DHCPv4 and IPv6 autoconf in parallel and its
"Configuring (net0 ...)" step waits ~13 s for an RA that never comes on an IPv4-only segment.
An RA with router lifetime 0, no M/O flags and no prefix options tells it "no IPv6 here", so
it proceeds at once (a BIOS PXE boot goes from ~25 s to ~11 s under TCG). No addresses or
routes are handed out. Runs until killed.

usage: ra.py IFACE    (inside the test's gateway namespace: ip netns exec NS python3 ra.py gw0)
"""
import socket
import struct
import sys
import time

iface = sys.argv[1]
ifindex = socket.if_nametoindex(iface)
s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, iface.encode())
# receive RS sent to all-routers
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP,
             socket.inet_pton(socket.AF_INET6, "ff02::2") + struct.pack("@I", ifindex))
# RFC 4861: RA must be sent with hop limit 255
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 255)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, 255)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, ifindex)
# type 134 RA, code 0, checksum 0 (kernel fills it), cur hop limit 0 (unspecified),
# flags 0 (no M/O), router lifetime 0 (not a default router), reachable 0, retrans 0
RA = struct.pack("!BBHBBHII", 134, 0, 0, 0, 0, 0, 0, 0)
sys.stderr.write("%.3f ra.py answering RS on %s\n" % (time.time(), iface))
sys.stderr.flush()
while True:
    data, addr = s.recvfrom(1500)
    if data and data[0] == 133:  # Router Solicitation
        dst = addr[0].split("%")[0]
        target = dst if dst != "::" else "ff02::1"
        # Right after the namespace is created the interface's link-local address is still
        # tentative (DAD, ~1-2 s) and sendto fails with EADDRNOTAVAIL; the first RS (from the
        # kernel's own autoconf on the bridge side) arrives exactly then. Retry, never die.
        for attempt in range(20):
            try:
                s.sendto(RA, (target, 0, 0, ifindex))
                sys.stderr.write("%.3f RS from %s -> empty RA\n" % (time.time(), addr[0]))
                break
            except OSError as e:
                if attempt == 19:
                    sys.stderr.write("%.3f RS from %s: RA not sent: %s\n" % (time.time(), addr[0], e))
                else:
                    time.sleep(0.25)
        sys.stderr.flush()
