/*
 * TLB shootdown loop for hvkvm's Linux guest (built static by scripts/linux-guest.sh, run by
 * the initramfs /init when the kernel command line has hvkvm.tlbbench=N).
 *
 * Then a correctness check: the same address is remapped (MAP_FIXED) N times between two
 * pages of a memfd, and after each remap the thread on CPU 1, which read the address before,
 * must read the new page: an old value means a translation survived the remote flush that the
 * remap's implicit munmap must have done. Prints the number of stale reads (must be 0).
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
#include <unistd.h>
#include <x86intrin.h>

static atomic_int stop;
static atomic_int running;
static volatile char *shared;
/* The remap check: the generation the main thread published, the one the checker read. */
static atomic_long generation = -1;
static atomic_long checked = -1;
static atomic_long stale;
static volatile long *window;

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

static void *checker(void *arg)
{
	(void)arg;
	pin(1);
	long seen = -1;
	while (!atomic_load(&stop)) {
		long g = atomic_load(&generation);
		if (g == seen) {
			_mm_pause();
			continue;
		}
		/* Page g % 2 holds the value g % 2 + 1. */
		if (window[0] != g % 2 + 1)
			atomic_fetch_add(&stale, 1);
		seen = g;
		atomic_store(&checked, g);
	}
	return NULL;
}

static int remap_check(int n)
{
	pthread_t t;
	int fd = memfd_create("tlbcheck", 0);
	if (fd < 0 || ftruncate(fd, 8192))
		return 1;
	for (int page = 0; page < 2; page++) {
		long *p = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, page * 4096);
		if (p == MAP_FAILED)
			return 1;
		p[0] = page + 1;
		munmap(p, 4096);
	}
	window = mmap(NULL, 4096, PROT_READ, MAP_SHARED, fd, 0);
	if (window == MAP_FAILED)
		return 1;
	atomic_store(&stop, 0);
	if (pthread_create(&t, NULL, checker, NULL))
		return 1;
	for (long g = 0; g < n; g++) {
		/* MAP_FIXED replaces the old mapping: an implicit munmap and its remote flush. */
		if (mmap((void *)window, 4096, PROT_READ, MAP_SHARED | MAP_FIXED, fd, (g % 2) * 4096) ==
		    MAP_FAILED)
			return 1;
		atomic_store(&generation, g);
		while (atomic_load(&checked) != g)
			_mm_pause();
	}
	atomic_store(&stop, 1);
	pthread_join(t, NULL);
	printf("HVKVM-TLB-CHECK: %d remaps, %ld stale reads\n", n, atomic_load(&stale));
	return 0;
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
	return remap_check(n);
}
