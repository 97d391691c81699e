"""The volunteer-cloud tunnel: users' TCP streams to leased VMs on workers behind NAT, carried
through the service over one message channel per lease (issue 17)."""
