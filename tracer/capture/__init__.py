"""Captures: reading pcap and pcapng files into sightings, fast, in parallel."""
