/* deploy/docker/curve_keypair.c - meerkat-curve-keypair: prints a new ZeroMQ CURVE key pair for the
 * compose files' init step (deploy/compose/init.sh), which writes the secret as a Meerkat key file
 * (bus_curve.key, gd_curve.key) and the public key into the other data center's gd.peers.
 *
 *   meerkat-curve-keypair        prints "PUBLIC SECRET\n" (Z85, 40 characters each)
 *   meerkat-curve-keypair FILE   prints the public key of the secret in Meerkat key file FILE
 *                                (comment lines starting with '#', then the Z85 secret)
 * Exit status 0, or 1 with one line on stderr. */
#include <stdio.h>
#include <string.h>

#include <zmq.h>

int main(int argc, char **argv)
{
    char pub[41], sec[41];
    if (argc == 1) {
        if (zmq_curve_keypair(pub, sec) != 0) {
            fprintf(stderr, "meerkat-curve-keypair: %s (libzmq without CURVE?)\n", zmq_strerror(zmq_errno()));
            return 1;
        }
        printf("%s %s\n", pub, sec);
        memset(sec, 0, sizeof sec);
        return 0;
    }
    FILE *f = fopen(argv[1], "r");
    if (f == NULL) {
        perror(argv[1]);
        return 1;
    }
    char line[256];
    int found = 0;
    while (fgets(line, sizeof line, f) != NULL) {
        if (line[0] == '#')
            continue;
        line[strcspn(line, "\r\n")] = '\0';
        if (strlen(line) == 40 && zmq_curve_public(pub, line) == 0)
            found = 1;
        break;
    }
    memset(line, 0, sizeof line);
    fclose(f);
    if (!found) {
        fprintf(stderr, "meerkat-curve-keypair: %s does not hold a CURVE secret key (40 characters of Z85)\n", argv[1]);
        return 1;
    }
    printf("%s\n", pub);
    return 0;
}
