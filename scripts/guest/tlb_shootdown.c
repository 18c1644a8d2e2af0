/*
 * TLB shootdown loop for hvkvm's Linux guest (built static by scripts/linux-guest.sh, run by
 * the initramfs /init when the kernel command line has hvkvm.tlbbench=N).
 *
 * A spinner thread pinned to CPU 1 keeps using the process's address space; the main thread,
 * pinned to CPU 0, maps a page, touches it and unmaps it N times. Each munmap must remove the
 * translation from CPU 1 too: a remote TLB flush (Hyper-V's flush hypercall when the kernel
 * uses it, else IPIs). Prints TSC cycles per iteration: the guest TSC is the host's, so the
 * cycles are real host cycles even when hvkvm dilates the guest's time.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <x86intrin.h>

static atomic_int stop;
static atomic_int running;
static volatile char *shared;

static void pin(int cpu)
{
	cpu_set_t set;
	CPU_ZERO(&set);
	CPU_SET(cpu, &set);
	sched_setaffinity(0, sizeof(set), &set);
}

static void *spinner(void *arg)
{
	(void)arg;
	pin(1);
	atomic_store(&running, 1);
	while (!atomic_load(&stop)) {
		shared[0]++;
		_mm_pause();
	}
	return NULL;
}

int main(int argc, char **argv)
{
	int n = argc > 1 ? atoi(argv[1]) : 1000;
	pthread_t t;
	unsigned long long t0, t1;

	shared = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (shared == MAP_FAILED)
		return 1;
	pin(0);
	if (pthread_create(&t, NULL, spinner, NULL))
		return 1;
	while (!atomic_load(&running))
		_mm_pause();
	t0 = __rdtsc();
	for (int i = 0; i < n; i++) {
		char *p = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (p == MAP_FAILED)
			return 1;
		p[0] = 1;
		munmap(p, 4096);
	}
	t1 = __rdtsc();
	atomic_store(&stop, 1);
	pthread_join(t, NULL);
	printf("HVKVM-TLB: %d iterations, %llu TSC cycles each\n", n, (t1 - t0) / n);
	return 0;
}
