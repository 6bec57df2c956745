// Package certify holds the lab tests of result certification: a real
// Slurm pool (slurmctld, six slurmd, one munged) in network namespaces of
// the lab, two of whose nodes are saboteurs, running a real BLAST workload
// through pvc-certify. TestSlurmBLASTSaboteurs puts the pool on one site's
// LAN; TestSlurmBLASTOverOverlay puts the controller and every node in a
// site of its own behind a different NAT or firewall, each running pvcd,
// with Slurm on the overlay's 240.x addresses. The tests need root and the
// Debian packages slurmctld, slurmd, slurm-client, munge and ncbi-blast+
// (the overlay test also miniupnpd and stun-server for its UPnP site;
// scripts/install-deps.sh); they skip and say which is missing otherwise.
package certify
