// CPU seconds of the simulator process (the bench reports simulated cycles per CPU second, a
// figure that does not depend on how busy the machine is).
#include <sys/resource.h>

extern "C" double tb_cpu_seconds() {
    struct rusage u;
    getrusage(RUSAGE_SELF, &u);
    return u.ru_utime.tv_sec + u.ru_stime.tv_sec + 1e-6 * (u.ru_utime.tv_usec + u.ru_stime.tv_usec);
}
