"""Docker Swarm: the few manager operations Berth drives (api), an in-memory swarm that is held
to the same contract (fake), and the pure parts in between: the service spec of a process group
(specs) and what a task says about an instance (tasks)."""
