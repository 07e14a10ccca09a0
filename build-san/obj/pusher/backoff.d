build-san/obj/pusher/backoff.o: pusher/backoff.c pusher/backoff.h
pusher/backoff.h:
