//! Host networking for the node's guests: a libvirt network (bridge,
//! dnsmasq, NAT) per Network, DHCP reservations from IPAM, security groups,
//! floating addresses and the metadata redirect as iptables rules.
