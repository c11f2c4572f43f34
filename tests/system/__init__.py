"""Tests against real components: a real `mailgate serve`, the CLI as a process, Dovecot,
Postfix, a relay sink, PostgreSQL stopped and started."""
