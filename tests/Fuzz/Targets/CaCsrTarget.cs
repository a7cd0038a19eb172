using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using Google.Protobuf;
using Grpc.Core;
using Weft.Ca;
using Weft.Ca.Protocol;

namespace Weft.Fuzz;

/// <summary>
/// One gRPC request message (the protobuf <c>IstioCertificateRequest</c> a node sends: CSR, validity, metadata)
/// decoded and handed to the standalone CA's <see cref="CertificateService"/> from a caller authenticated as node1
/// by its node certificate: identity from the metadata, placement check, PKCS#10 decode and signature, key and
/// subject alternative name checks, then signing. The CA's own answers (a protobuf decode error, a refusal as
/// PERMISSION_DENIED) are fine; anything else escaping, or a certificate for another identity than the one asked
/// for, is a crash.
/// </summary>
internal sealed class CaCsrTarget : IFuzzTarget
{
    public string Name => "ca-csr";

    public string Description => "a CA request message (protobuf) into the CA's CSR decode, checks and signing";

    public void Run(ReadOnlySpan<byte> input)
    {
        IstioCertificateRequest request;
        try
        {
            request = IstioCertificateRequest.Parser.ParseFrom(input);
        }
        catch (InvalidProtocolBufferException)
        {
            return;
        }

        var caller = new CaCaller(CaFuzzWorld.NodeCertificate, null, "fuzz");
        CaResponses.Check(() => CaFuzzWorld.Standalone.CreateCertificateAsync(request, caller, CancellationToken.None), request);
    }

    public IEnumerable<(string Name, byte[] Content)> Seeds()
    {
        const string client = "spiffe://cluster.local/ns/demo/sa/client";
        using var ec = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        using var ec384 = ECDsa.Create(ECCurve.NamedCurves.nistP384);
        using var rsa = RSA.Create(2048);
        yield return ("ecdsa-p256", CaFuzzWorld.Request(client, CaFuzzWorld.Csr(ec, [client])).ToByteArray());
        yield return ("ecdsa-p384-validity", CaFuzzWorld.Request(client, CaFuzzWorld.Csr(ec384, [client]), validity: 3600).ToByteArray());
        yield return ("rsa-2048", CaFuzzWorld.Request(client, CaFuzzWorld.Csr(rsa, [client])).ToByteArray());
        yield return ("two-uris-and-dns", CaFuzzWorld.Request(client, CaFuzzWorld.Csr(ec, [client, "spiffe://cluster.local/ns/demo/sa/server"], ["a.example"])).ToByteArray());
        yield return ("identity-mismatch", CaFuzzWorld.Request(client, CaFuzzWorld.Csr(ec, ["spiffe://cluster.local/ns/demo/sa/server"])).ToByteArray());
        yield return ("no-pod-on-node", CaFuzzWorld.Request("spiffe://cluster.local/ns/demo/sa/server", CaFuzzWorld.Csr(ec, ["spiffe://cluster.local/ns/demo/sa/server"])).ToByteArray());
        yield return ("foreign-trust-domain", CaFuzzWorld.Request("spiffe://other.td/ns/demo/sa/client", CaFuzzWorld.Csr(ec, ["spiffe://other.td/ns/demo/sa/client"])).ToByteArray());
        yield return ("no-metadata", new IstioCertificateRequest { Csr = CaFuzzWorld.Csr(ec, [client]) }.ToByteArray());
        yield return ("csr-not-pem", CaFuzzWorld.Request(client, "-----BEGIN CERTIFICATE REQUEST-----\nMIIB\n-----END CERTIFICATE REQUEST-----\n").ToByteArray());
    }
}

/// <summary>What both CA harnesses accept as the CA's answer to a request.</summary>
internal static class CaResponses
{
    public static void Check(Func<Task<IstioCertificateResponse>> create, IstioCertificateRequest request)
    {
        IstioCertificateResponse response;
        try
        {
            response = create().GetAwaiter().GetResult();
        }
        catch (RpcException e) when (e.StatusCode is StatusCode.PermissionDenied or StatusCode.Unavailable)
        {
            return;
        }

        // Issued: the leaf must be for exactly the identity the request named, never another.
        var requested = request.Metadata.Fields[CertificateService.ImpersonatedIdentityKey].StringValue;
        using var leaf = X509Certificate2.CreateFromPem(response.CertChain[0]);
        var san = leaf.Extensions.OfType<X509SubjectAlternativeNameExtension>().Single();
        var uris = CertificateRequestAuthorizer.Names([san]).Uris;
        if (uris is not [var uri] || uri != requested)
        {
            throw new InvalidOperationException($"the CA issued a certificate for [{string.Join(", ", uris)}] to a request for {requested}");
        }
    }
}
