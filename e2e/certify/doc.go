// Package certify holds the lab test of result certification: a real
// Slurm pool (slurmctld, six slurmd, one munged) in network namespaces of
// the lab, two of whose nodes are saboteurs, running a real BLAST workload
// through pvc-certify. The test needs root and the Debian packages slurmctld,
// slurmd, slurm-client, munge and ncbi-blast+ (scripts/install-deps.sh); it
// skips and says which is missing otherwise.
package certify
