using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using Grpc.Core;
using Weft.Ca;
using Weft.Identity;

namespace Weft.Tests.Ca;

/// <summary>
/// The CA service over real TLS and gRPC on loopback: node1 runs web (demo) and db (data); node2 runs api (demo).
/// Each refusal is seen by the client as PERMISSION_DENIED and counted under its reason.
/// </summary>
public sealed class CaServiceTests : IAsyncLifetime
{
    private static readonly TestPod[] Pods =
    [
        new("web-1", "demo", "web", "node1", "10.244.1.2"),
        new("db-1", "data", "db", "node1", "10.244.1.3"),
        new("api-1", "demo", "api", "node2", "10.244.2.2"),
    ];

    private CaTestServer _ca = null!;
    private X509Certificate2 _node1 = null!;

    public async Task InitializeAsync()
    {
        _ca = await CaTestServer.StartAsync(Pods);
        _node1 = _ca.NodeCertificate("node1");
    }

    public async Task DisposeAsync()
    {
        _node1.Dispose();
        await _ca.DisposeAsync();
    }

    [Fact]
    public async Task AllowedIdentity_GetsAChainWhoseLeafNamesOnlyThatIdentity_VerifiesToTheRoot_AndCarriesTheCsrKey()
    {
        using var client = _ca.Client(_node1);
        using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var id = CaTestPki.Id("demo", "web");
        var issuedBefore = _ca.Server.Metrics.IssuedCount;

        var response = await client.CreateAsync(id, CaTestPki.Csr(key, id));

        Assert.Equal(2, response.CertChain.Count); // leaf, root
        using var leaf = X509Certificate2.CreateFromPem(response.CertChain[0]);
        using var root = X509Certificate2.CreateFromPem(response.CertChain[^1]);
        Assert.Equal(_ca.Root.Thumbprint, root.Thumbprint);
        Assert.True(CaTestPki.ChainsTo(leaf, _ca.Root, server: false));
        Assert.True(CaTestPki.ChainsTo(leaf, _ca.Root, server: true));
        Assert.Equal([id], SpiffeVerifier.UriSans(leaf));
        var san = Assert.Single(leaf.Extensions.OfType<X509SubjectAlternativeNameExtension>());
        Assert.Empty(san.EnumerateDnsNames());
        Assert.Empty(san.EnumerateIPAddresses());
        Assert.Equal("", leaf.Subject); // the CSR's subject "O=test" is not copied
        Assert.False(Assert.Single(leaf.Extensions.OfType<X509BasicConstraintsExtension>()).CertificateAuthority);
        Assert.Equal(X509KeyUsageFlags.DigitalSignature, Assert.Single(leaf.Extensions.OfType<X509KeyUsageExtension>()).KeyUsages);
        using var leafKey = leaf.GetECDsaPublicKey()!;
        Assert.Equal(key.ExportSubjectPublicKeyInfo(), leafKey.ExportSubjectPublicKeyInfo());
        Assert.Equal(issuedBefore + 1, _ca.Server.Metrics.IssuedCount);
        Assert.Contains("weft_ca_issued_total", await _ca.Server.Metrics.ExportAsync());
    }

    [Fact]
    public async Task RequestedValidity_IsCappedAtTheMaximum_AndAShorterOneIsKept()
    {
        using var client = _ca.Client(_node1);
        using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var id = CaTestPki.Id("data", "db");

        var asked48h = await client.CreateAsync(id, CaTestPki.Csr(key, id), validitySeconds: 48 * 3600);
        var asked1h = await client.CreateAsync(id, CaTestPki.Csr(key, id), validitySeconds: 3600);
        var askedNothing = await client.CreateAsync(id, CaTestPki.Csr(key, id));

        var now = DateTime.UtcNow;
        using var capped = X509Certificate2.CreateFromPem(asked48h.CertChain[0]);
        using var shortOne = X509Certificate2.CreateFromPem(asked1h.CertChain[0]);
        using var byDefault = X509Certificate2.CreateFromPem(askedNothing.CertChain[0]);
        Assert.InRange(capped.NotAfter.ToUniversalTime(), now.AddHours(23), now.AddHours(24));
        Assert.InRange(shortOne.NotAfter.ToUniversalTime(), now.AddMinutes(50), now.AddHours(1));
        Assert.InRange(byDefault.NotAfter.ToUniversalTime(), now.AddHours(23), now.AddHours(24));
    }

    [Fact]
    public async Task ServiceAccountWithNoPodAnywhere_IsRefused()
    {
        using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var id = CaTestPki.Id("demo", "nobody");
        await AssertRefusedAsync(RefusalReason.NoPodOnNode, _node1, id, CaTestPki.Csr(key, id));
    }

    [Fact]
    public async Task ServiceAccountWithPodsOnlyOnAnotherNode_IsRefused_ButThatNodeGetsIt()
    {
        using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var id = CaTestPki.Id("demo", "api");
        await AssertRefusedAsync(RefusalReason.NoPodOnNode, _node1, id, CaTestPki.Csr(key, id));

        using var node2 = _ca.NodeCertificate("node2");
        using var client = _ca.Client(node2);
        var response = await client.CreateAsync(id, CaTestPki.Csr(key, id));
        using var leaf = X509Certificate2.CreateFromPem(response.CertChain[0]);
        Assert.Equal([id], SpiffeVerifier.UriSans(leaf));
    }

    [Fact]
    public async Task NodeCertificateFromAnotherCa_IsRefused()
    {
        var otherDir = Directory.CreateTempSubdirectory("weft-ca-other-").FullName;
        try
        {
            var other = CertificateAuthority.Load(SelfSignedRoot.Write(otherDir, CaTestServer.TrustDomain));
            using var foreignNode = CaCertificates.IssueNodeCertificate(other, new NodeIdentity(CaTestServer.TrustDomain, "node1"), TimeSpan.FromHours(1));
            using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
            var id = CaTestPki.Id("demo", "web");
            await AssertRefusedAsync(RefusalReason.NodeCertificateUntrusted, foreignNode, id, CaTestPki.Csr(key, id));
        }
        finally
        {
            Directory.Delete(otherDir, recursive: true);
        }
    }

    [Fact]
    public async Task NoClientCertificate_IsRefused()
    {
        using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var id = CaTestPki.Id("demo", "web");
        await AssertRefusedAsync(RefusalReason.NoClientCertificate, null, id, CaTestPki.Csr(key, id));
    }

    [Fact]
    public async Task WorkloadCertificateFromThisCa_IsNoNodeCertificate_AndIsRefused()
    {
        var svid = new SvidIssuer().Issue(_ca.Authority, SpiffeId.Parse(CaTestPki.Id("demo", "web")));
        using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var id = CaTestPki.Id("demo", "web");
        await AssertRefusedAsync(RefusalReason.NotANodeCertificate, svid.Certificate, id, CaTestPki.Csr(key, id));
    }

    [Fact]
    public async Task CsrWithTwoUris_IsRefused()
    {
        using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var id = CaTestPki.Id("demo", "web");
        await AssertRefusedAsync(RefusalReason.CsrNames, _node1, id, CaTestPki.Csr(key, [id, CaTestPki.Id("demo", "api")]));
    }

    [Fact]
    public async Task CsrWithADnsName_IsRefused()
    {
        using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var id = CaTestPki.Id("demo", "web");
        await AssertRefusedAsync(RefusalReason.CsrNames, _node1, id, CaTestPki.Csr(key, [id], ["web.demo.svc"]));
    }

    [Fact]
    public async Task CsrNamingAnotherIdentityThanRequested_IsRefused()
    {
        using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var id = CaTestPki.Id("demo", "web");
        await AssertRefusedAsync(RefusalReason.CsrIdentityMismatch, _node1, id, CaTestPki.Csr(key, CaTestPki.Id("data", "db")));
    }

    [Fact]
    public async Task IdentityInAnotherTrustDomain_IsRefused()
    {
        using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var id = CaTestPki.Id("demo", "web", trustDomain: "other.example");
        await AssertRefusedAsync(RefusalReason.IdentityForeignTrustDomain, _node1, id, CaTestPki.Csr(key, id));
    }

    [Fact]
    public async Task RequestWithoutImpersonatedIdentity_IsRefused()
    {
        using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        await AssertRefusedAsync(RefusalReason.IdentityMissing, _node1, null, CaTestPki.Csr(key, CaTestPki.Id("demo", "web")));
    }

    [Fact]
    public async Task CsrWhoseSignatureDoesNotVerify_IsRefused()
    {
        using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var id = CaTestPki.Id("demo", "web");
        var csr = CaTestPki.Csr(key, id);
        var der = Convert.FromBase64String(csr[PemEncoding.Find(csr).Base64Data]);
        der[^5] ^= 0x01; // inside the signature
        var broken = PemEncoding.WriteString("CERTIFICATE REQUEST", der);
        await AssertRefusedAsync(RefusalReason.CsrInvalid, _node1, id, broken);
    }

    [Fact]
    public async Task PodRemovedFromTheInventory_AfterAReload_IsRefused()
    {
        using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var id = CaTestPki.Id("data", "db");
        using (var client = _ca.Client(_node1))
        {
            await client.CreateAsync(id, CaTestPki.Csr(key, id));
        }

        _ca.ReplacePods(Pods.Where(p => p.ServiceAccount != "db"));

        await AssertRefusedAsync(RefusalReason.NoPodOnNode, _node1, id, CaTestPki.Csr(key, id));
    }

    [Fact]
    public async Task CsrOverTheSizeLimit_IsRefused()
    {
        using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var id = CaTestPki.Id("demo", "web");
        // A real, signed CSR made big by an extension of 9 KiB: over the 8 KiB CSR limit, under the 64 KiB message limit.
        var padded = CaTestPki.Csr(key, [id], extra: new X509Extension("1.3.6.1.4.1.99999.1", new byte[] { 0x04, 0x82, 0x24, 0x00 }.Concat(new byte[0x2400]).ToArray(), false));
        Assert.InRange(padded.Length, 8 * 1024 + 1, 60 * 1024);
        await AssertRefusedAsync(RefusalReason.CsrTooLarge, _node1, id, padded);
    }

    [Theory]
    [InlineData(100 * 1024)]
    [InlineData(4 * 1024 * 1024)] // far more than a stream's flow-control window: never buffered whole
    public async Task RequestMessageOverTheSizeLimit_IsRefusedWithResourceExhausted_AndCounted(int size)
    {
        using var client = _ca.Client(_node1);
        var before = _ca.Server.Metrics.RefusedCount(RefusalReason.RequestTooLarge);

        var failure = await Assert.ThrowsAsync<RpcException>(() => client.CreateAsync(CaTestPki.Id("demo", "web"), new string('A', size)));

        // The server answers RESOURCE_EXHAUSTED and resets the stream while the client may still be sending
        // the rest of the message: the client then sees the reset (Unknown) instead of the status. Either way
        // the refusal is the size limit's, which the counter below says.
        Assert.True(failure.StatusCode is StatusCode.ResourceExhausted or StatusCode.Unknown, failure.ToString());
        // Counted when the call has ended on the server, which can be just after the client saw its status.
        await CaTestPki.WaitUntilAsync(() => _ca.Server.Metrics.RefusedCount(RefusalReason.RequestTooLarge) == before + 1);
        // The connection and the service carry on.
        using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        await client.CreateAsync(CaTestPki.Id("demo", "web"), CaTestPki.Csr(key, CaTestPki.Id("demo", "web")));
    }

    private async Task AssertRefusedAsync(string reason, X509Certificate2? clientCertificate, string? identity, string csr)
    {
        using var client = _ca.Client(clientCertificate);
        var before = _ca.Server.Metrics.RefusedCount(reason);
        var issuedBefore = _ca.Server.Metrics.IssuedCount;

        var failure = await Assert.ThrowsAsync<RpcException>(() => client.CreateAsync(identity, csr));

        Assert.Equal(StatusCode.PermissionDenied, failure.StatusCode);
        Assert.Equal("permission denied", failure.Status.Detail);
        Assert.Equal(before + 1, _ca.Server.Metrics.RefusedCount(reason));
        Assert.Equal(issuedBefore, _ca.Server.Metrics.IssuedCount);
        Assert.Contains($"weft_ca_refused_total{{reason=\"{reason}\"}}", await _ca.Server.Metrics.ExportAsync());
    }
}
