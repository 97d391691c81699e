"""The cloud road: providers of worker instances, and the autoscaler that runs cloud pools."""
