"""Graphs: neighbour lists with periodic shifts, built outside the model."""

from molequi.graph.neighbors import (
    NeighborOverflowError,
    RadiusGraph,
    edge_vectors,
    minimum_distance,
    neighbor_list,
)

__all__ = ["neighbor_list", "RadiusGraph", "edge_vectors", "minimum_distance", "NeighborOverflowError"]
