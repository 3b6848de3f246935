/*
 * The nodes of a communicator (api_collectives.h, scaleml_topology_create).
 *
 * Steps, once per engine state (collective over the private communicator):
 *   1. the node communicator: MPI_Comm_split_type(MPI_COMM_TYPE_SHARED) with
 *      the rank as key, or, with ranks_per_node = R > 0, MPI_Comm_split by
 *      rank / R (consecutive ranks; the last node may be smaller);
 *   2. one MPI_Allgather of (lowest rank of my node, my node's size): nodes are
 *      numbered by their lowest rank, so every rank sees the same numbering
 *      whatever order MPI gives the nodes;
 *   3. the cross-node communicator: MPI_Comm_split by local rank, ordered by
 *      node index (with unequal nodes the high local ranks have fewer members).
 * Both communicators return errors (MPI_ERRORS_RETURN) like the private one.
 */
#include <stdlib.h>

#include "collectives/collectives.h"
#include "collectives/comm_util.h"

static int topology_build(MPI_Comm comm, int ranks_per_node, scaleml_topology *t)
{
    int rank, size, rc;
    if ((rc = cu_check(MPI_Comm_rank(comm, &rank), "MPI_Comm_rank")) ||
        (rc = cu_check(MPI_Comm_size(comm, &size), "MPI_Comm_size")))
        return rc;
    if (ranks_per_node > 0)
        rc = cu_check(MPI_Comm_split(comm, rank / ranks_per_node, rank, &t->node), "MPI_Comm_split");
    else
        rc = cu_check(MPI_Comm_split_type(comm, MPI_COMM_TYPE_SHARED, rank, MPI_INFO_NULL, &t->node),
                      "MPI_Comm_split_type");
    if (rc) return rc;
    scaleml_topology_info *info = &t->info;
    int lowest;
    if ((rc = cu_check(MPI_Comm_set_errhandler(t->node, MPI_ERRORS_RETURN), "MPI_Comm_set_errhandler")) ||
        (rc = cu_check(MPI_Comm_rank(t->node, &info->local_rank), "MPI_Comm_rank")) ||
        (rc = cu_check(MPI_Comm_size(t->node, &info->local_size), "MPI_Comm_size")) ||
        (rc = cu_check(MPI_Allreduce(&rank, &lowest, 1, MPI_INT, MPI_MIN, t->node), "MPI_Allreduce")))
        return rc;
    int mine[2] = {lowest, info->local_size};
    int *all = malloc(2 * (size_t)size * sizeof *all);
    if (!all) return scaleml_fail(SCALEML_ERR_NOMEM, "out of memory for the topology of %d ranks", size);
    rc = cu_check(MPI_Allgather(mine, 2, MPI_INT, all, 2, MPI_INT, comm), "MPI_Allgather");
    if (!rc) {
        info->nodes = info->node = 0;
        info->node_size_min = size, info->node_size_max = 0;
        for (int r = 0; r < size; r++) {
            if (all[2 * r] != r) continue;  /* not the lowest rank of its node */
            if (r < lowest) info->node++;
            info->nodes++;
            int node_size = all[2 * r + 1];
            if (node_size < info->node_size_min) info->node_size_min = node_size;
            if (node_size > info->node_size_max) info->node_size_max = node_size;
        }
    }
    free(all);
    if (!rc) rc = cu_check(MPI_Comm_split(comm, info->local_rank, info->node, &t->cross), "MPI_Comm_split");
    if (!rc) rc = cu_check(MPI_Comm_set_errhandler(t->cross, MPI_ERRORS_RETURN), "MPI_Comm_set_errhandler");
    return rc;
}

int scaleml_topology_create(uintptr_t comm_address, int ranks_per_node, scaleml_topology **topology)
{
    *topology = NULL;
    if (ranks_per_node < 0) return scaleml_fail(SCALEML_ERR_ARG, "ranks_per_node must be >= 0 (0: from MPI)");
    scaleml_topology *t = calloc(1, sizeof *t);
    if (!t) return scaleml_fail(SCALEML_ERR_NOMEM, "out of memory");
    t->node = t->cross = MPI_COMM_NULL;
    int rc = topology_build(*(const MPI_Comm *)comm_address, ranks_per_node, t);
    if (rc) {
        scaleml_topology_free(t);
        return rc;
    }
    *topology = t;
    return SCALEML_OK;
}

void scaleml_topology_free(scaleml_topology *t)
{
    if (!t) return;
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (!finalized) {
        if (t->node != MPI_COMM_NULL) MPI_Comm_free(&t->node);
        if (t->cross != MPI_COMM_NULL) MPI_Comm_free(&t->cross);
    }
    free(t);
}

void scaleml_topology_describe(const scaleml_topology *t, scaleml_topology_info *info)
{
    *info = t->info;
}
