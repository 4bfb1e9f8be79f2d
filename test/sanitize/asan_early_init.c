/*
 * Preloaded after the AddressSanitizer runtime into PostgreSQL's server by scripts/sanitize.sh.
 *
 * A preloaded ASan runtime initialises lazily, on the first malloc. In PostgreSQL's process that first malloc comes
 * from libgpg-error's constructor (pulled in through libldap/libsystemd) inside glibc's bindtextdomain, which holds
 * glibc's gettext lock for writing; ASan's start-up then calls dlerror, which translates its message under the same
 * lock, and the process hangs before main (postgres -V never returns; `ps` hangs the same way). Interposing
 * bindtextdomain lets ASan initialise before that lock is taken.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdlib.h>

char *
bindtextdomain(const char *domainname, const char *dirname)
{
	static char *(*next_bindtextdomain) (const char *, const char *);

	if (next_bindtextdomain == NULL)
	{
		/* volatile: the compiler would otherwise drop a malloc that is freed at once */
		void	   *volatile first_allocation = malloc(1);

		free(first_allocation);
		next_bindtextdomain = (char *(*) (const char *, const char *)) dlsym(RTLD_NEXT, "bindtextdomain");
	}
	return next_bindtextdomain(domainname, dirname);
}
