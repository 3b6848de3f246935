/*
 * How a rank waits for a small message, timed: the measurement behind the
 * receives of csrc/collectives/comm_util.c. Each mode exchanges 256 bytes
 * with rank ^ 1 (P even), 200 times after 5 warm-ups; rank 0 prints the
 * slowest rank's mean per exchange.
 *
 *   mkdir -p build && .venv/bin/mpicc -O2 bench/wait_modes.c -o build/wait_modes && .venv/bin/mpiexec -n 4 build/wait_modes
 *
 * With ranks sharing cores (4 ranks on 2), MPICH's blocking MPI_Mprobe spins
 * through a scheduler time slice; polling with a yield lets the partner run.
 */
#include <mpi.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
static char sb[256], rb[1<<16];
static int partner;
static void mprobe(MPI_Comm c){MPI_Request q;MPI_Message m;MPI_Status s;MPI_Isend(sb,256,MPI_BYTE,partner,1,c,&q);MPI_Mprobe(partner,1,c,&m,&s);MPI_Mrecv(rb,256,MPI_BYTE,&m,MPI_STATUS_IGNORE);MPI_Wait(&q,MPI_STATUS_IGNORE);}
static void improbe_yield(MPI_Comm c){MPI_Request q;MPI_Message m;MPI_Status s;int f=0;MPI_Isend(sb,256,MPI_BYTE,partner,2,c,&q);while(1){MPI_Improbe(partner,2,c,&f,&m,&s);if(f)break;sched_yield();}MPI_Mrecv(rb,256,MPI_BYTE,&m,MPI_STATUS_IGNORE);MPI_Wait(&q,MPI_STATUS_IGNORE);}
static void improbe_spin(MPI_Comm c){MPI_Request q;MPI_Message m;MPI_Status s;int f=0;MPI_Isend(sb,256,MPI_BYTE,partner,3,c,&q);while(1){MPI_Improbe(partner,3,c,&f,&m,&s);if(f)break;}MPI_Mrecv(rb,256,MPI_BYTE,&m,MPI_STATUS_IGNORE);MPI_Wait(&q,MPI_STATUS_IGNORE);}
static void preposted_wait(MPI_Comm c){MPI_Request q[2];MPI_Irecv(rb,sizeof rb,MPI_BYTE,partner,4,c,&q[0]);MPI_Isend(sb,256,MPI_BYTE,partner,4,c,&q[1]);MPI_Waitall(2,q,MPI_STATUSES_IGNORE);}
static void preposted_yield(MPI_Comm c){MPI_Request q[2];int f=0;MPI_Irecv(rb,sizeof rb,MPI_BYTE,partner,5,c,&q[0]);MPI_Isend(sb,256,MPI_BYTE,partner,5,c,&q[1]);while(1){MPI_Testall(2,q,&f,MPI_STATUSES_IGNORE);if(f)break;sched_yield();}}
static void sendrecv(MPI_Comm c){MPI_Sendrecv(sb,256,MPI_BYTE,partner,6,rb,sizeof rb,MPI_BYTE,partner,6,c,MPI_STATUS_IGNORE);}
static void allred(MPI_Comm c){long a[18]={0},b[18];MPI_Allreduce(a,b,18,MPI_LONG,MPI_MAX,c);}
int main(int argc,char**argv){MPI_Init(&argc,&argv);int r,P;MPI_Comm_rank(MPI_COMM_WORLD,&r);MPI_Comm_size(MPI_COMM_WORLD,&P);partner=r^1;
 struct {const char*n;void(*f)(MPI_Comm);} T[]={{"mprobe",mprobe},{"improbe+yield",improbe_yield},{"improbe spin",improbe_spin},{"preposted waitall",preposted_wait},{"preposted test+yield",preposted_yield},{"sendrecv",sendrecv},{"allreduce18",allred}};
 for(int t=0;t<7;t++){for(int i=0;i<5;i++)T[t].f(MPI_COMM_WORLD);MPI_Barrier(MPI_COMM_WORLD);double t0=MPI_Wtime();int it=200;for(int i=0;i<it;i++)T[t].f(MPI_COMM_WORLD);double dt=(MPI_Wtime()-t0)/it,mx;MPI_Reduce(&dt,&mx,1,MPI_DOUBLE,MPI_MAX,0,MPI_COMM_WORLD);if(!r)printf("%-22s %9.1f us\n",T[t].n,mx*1e6);}
 MPI_Finalize();}
