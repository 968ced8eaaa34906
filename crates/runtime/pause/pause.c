/*
 * The pod sandbox's only process: it holds the pod's network and IPC
 * namespaces and sleeps until it is killed. Freestanding (no libc, no
 * startup files) so that the sandbox image is `FROM scratch` plus this one
 * static file; the agent builds that image itself, because no registry is
 * assumed. The agent stops sandboxes with SIGKILL, so no handler is needed.
 */
#if defined(__x86_64__)
static void sleep_forever(void) {
    for (;;) {
        long ret;
        /* pause(2) */
        __asm__ volatile("syscall" : "=a"(ret) : "a"(34L) : "rcx", "r11", "memory");
    }
}
#elif defined(__aarch64__)
static void sleep_forever(void) {
    for (;;) {
        /* ppoll(NULL, 0, NULL, NULL): aarch64 has no pause(2) */
        register long x0 __asm__("x0") = 0;
        register long x1 __asm__("x1") = 0;
        register long x2 __asm__("x2") = 0;
        register long x3 __asm__("x3") = 0;
        register long x8 __asm__("x8") = 73;
        __asm__ volatile("svc 0" : "+r"(x0) : "r"(x1), "r"(x2), "r"(x3), "r"(x8) : "memory");
    }
}
#else
#error "pause: unsupported architecture"
#endif

void _start(void) { sleep_forever(); }
