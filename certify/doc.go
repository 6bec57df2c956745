// Package certify certifies the results of jobs run by an unmodified batch
// scheduler on hosts that may return wrong results, by fault or on purpose
// (the PVC paper's §5.3.3; Sarmenta 2002).
//
// A Certifier submits each job through a Scheduler (Slurm, a local process
// executor, or the simulator) and accepts a result by one of two policies:
//
//   - PolicyVote: m+1 replicas on distinct hosts; if they disagree, 2m+1
//     more replicas on other hosts, and the majority of those is accepted;
//     without a majority the job is reported as having none.
//   - PolicyCredibility: replicas are added until the credibility of one
//     group of equal results (Sarmenta's formulas, from the spot-checks
//     each host passed) reaches 1-ε, so trusted hosts need fewer replicas.
//
// With either policy one job slot in k is a spot-check: a job whose answer
// is known. A host that fails one is blacklisted (with the evidence, in the
// persisted State) and excluded from every later submission. Hosts earn
// credits: the CPU seconds of their accepted work.
//
// Results are compared with a Comparator: byte equality, or a user command
// (a tolerance check for floating-point output, for example).
package certify
