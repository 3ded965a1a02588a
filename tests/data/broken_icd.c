/* A Vulkan driver (ICD) that is broken on purpose: it crashes, or hangs when
 * BROKEN_ICD_HANG is set, as soon as the Vulkan loader talks to it. Tests point
 * VK_ICD_FILENAMES at it to prove a bad GPU driver cannot stop the server. */
#include <signal.h>
#include <stdlib.h>
#include <unistd.h>

static void misbehave(void) {
    if (getenv("BROKEN_ICD_HANG")) {
        for (;;) pause();
    }
    raise(SIGSEGV);
}

__attribute__((visibility("default"))) int vk_icdNegotiateLoaderICDInterfaceVersion(unsigned *version) {
    (void)version;
    misbehave();
    return 0;
}

__attribute__((visibility("default"))) void *vk_icdGetInstanceProcAddr(void *instance, const char *name) {
    (void)instance;
    (void)name;
    misbehave();
    return 0;
}
