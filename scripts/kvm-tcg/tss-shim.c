/* LD_PRELOAD shim for run.sh: QEMU's TCG only honours the TSS
 * I/O permission bitmap when the cached TR type is 9 (available 64-bit TSS);
 * real CPUs, and KVM users, load TR with type 11 (busy).  Under TCG an `out`
 * at CPL > IOPL then raises #GP instead of being checked against the bitmap.
 * Rewrite TR type 11 -> 9 in KVM_SET_SREGS(2) so such guests behave as on
 * hardware.  Everything else is passed through unchanged. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <linux/kvm.h>
#include <stdarg.h>
#include <stdlib.h>

int ioctl(int fd, unsigned long req, ...)
{
	static int (*real)(int, unsigned long, ...);
	va_list ap;
	va_start(ap, req);
	void *arg = va_arg(ap, void *);
	va_end(ap);
	if (!real)
		real = (int (*)(int, unsigned long, ...))dlsym(RTLD_NEXT, "ioctl");
	if (req == KVM_SET_SREGS && arg && ((struct kvm_sregs *)arg)->tr.type == 11) {
		struct kvm_sregs s = *(struct kvm_sregs *)arg;
		s.tr.type = 9;
		return real(fd, req, &s);
	}
#ifdef KVM_SET_SREGS2
	if (req == KVM_SET_SREGS2 && arg && ((struct kvm_sregs2 *)arg)->tr.type == 11) {
		struct kvm_sregs2 s = *(struct kvm_sregs2 *)arg;
		s.tr.type = 9;
		return real(fd, req, &s);
	}
#endif
	return real(fd, req, arg);
}
