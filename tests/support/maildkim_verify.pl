#!/usr/bin/perl
# Verify every DKIM-Signature of the message on stdin with Mail::DKIM, looking
# keys up in a zone file (Net::DNS::Resolver::Mock) instead of the DNS.
# Usage: maildkim_verify.pl ZONEFILE < message
# Prints one line per signature: "<result> <algorithm> <domain> <selector>".
use strict;
use warnings;
use Mail::DKIM::Verifier;
use Mail::DKIM::DNS;
use Net::DNS::Resolver::Mock;

my $zone_path = shift @ARGV or die "usage: $0 ZONEFILE < message\n";
open(my $zf, '<', $zone_path) or die "cannot read $zone_path: $!\n";
my $zone = do { local $/; <$zf> };
close($zf);

my $resolver = Net::DNS::Resolver::Mock->new();
$resolver->zonefile_parse($zone);
Mail::DKIM::DNS::resolver($resolver);

binmode(STDIN);
my $verifier = Mail::DKIM::Verifier->new();
while (my $line = <STDIN>) {
    $line =~ s/\r?\n\z/\015\012/;
    $verifier->PRINT($line);
}
$verifier->CLOSE();
foreach my $sig ($verifier->signatures) {
    printf("%s %s %s %s\n", $sig->result, $sig->algorithm, $sig->domain, $sig->selector);
}
