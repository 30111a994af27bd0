"""The control plane (`hiclaw up`): provisioner, task engine, Manager agent, control API."""
