// The kernel's floor under "exec -> probes live": how long registering one
// uprobe takes (perf_event_open on the uprobe PMU, the way libbpf attaches
// a uprobe), first after an idle pause and then right after another. No
// BPF program and no process mapping the file: only the registration.
//
// usage: uprobe_register FILE OFFSET ROUNDS PAUSE_MS
// prints one line per round: "<first_us> <next_us>"
#include <linux/perf_event.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static double now_us(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec * 1e6 + t.tv_nsec / 1e3;
}

static int pmu_type(void)
{
	FILE *f = fopen("/sys/bus/event_source/devices/uprobe/type", "r");
	int type = -1;
	if (!f || fscanf(f, "%d", &type) != 1) {
		perror("/sys/bus/event_source/devices/uprobe/type");
		exit(2);
	}
	fclose(f);
	return type;
}

static int register_uprobe(int type, const char *path, unsigned long offset)
{
	struct perf_event_attr attr;
	memset(&attr, 0, sizeof(attr));
	attr.size = sizeof(attr);
	attr.type = type;
	attr.config1 = (unsigned long)path;
	attr.config2 = offset;
	int fd = syscall(SYS_perf_event_open, &attr, -1, 0, -1, PERF_FLAG_FD_CLOEXEC);
	if (fd < 0) {
		perror("perf_event_open (uprobe)");
		exit(2);
	}
	return fd;
}

int main(int argc, char **argv)
{
	if (argc != 5) {
		fprintf(stderr, "usage: %s FILE OFFSET ROUNDS PAUSE_MS\n", argv[0]);
		return 2;
	}
	const char *path = argv[1];
	unsigned long offset = strtoul(argv[2], NULL, 0);
	int rounds = atoi(argv[3]), pause_ms = atoi(argv[4]);
	int type = pmu_type();
	for (int i = 0; i < rounds; i++) {
		usleep(pause_ms * 1000);
		double t0 = now_us();
		int first = register_uprobe(type, path, offset);
		double t1 = now_us();
		int next = register_uprobe(type, path, offset + 1);
		double t2 = now_us();
		printf("%.1f %.1f\n", t1 - t0, t2 - t1);
		fflush(stdout);
		close(first);
		close(next);
	}
	return 0;
}
