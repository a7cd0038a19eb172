using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using Grpc.Core;
using Weft.Ca;
using Weft.Identity;

namespace Weft.Tests.Ca;

/// <summary>
/// A root rotation of a running CA service (standalone, loopback), step by step as docs/ca.md tells an operator:
/// add the new root to the bundle, switch the signer's certificate and key, remove the old root. The CA follows
/// its files (every 100 ms here) and publishes root-cert.pem and signing-root.pem; agents follow those.
/// </summary>
public sealed class CaRotationTests : IAsyncLifetime
{
    private static readonly TestPod Web = new("web-1", "demo", "web", "node1", "10.244.1.2");
    private static readonly SpiffeId WebId = new(CaTestServer.TrustDomain, "demo", "web");

    private CaTestServer _ca = null!;
    private string _published = null!;
    private CaFiles _newRoot = null!;
    private X509Certificate2 _oldRoot = null!;
    private X509Certificate2 _newRootCertificate = null!;

    public async Task InitializeAsync()
    {
        string? published = null;
        _ca = await CaTestServer.StartAsync([Web], (options, files) =>
        {
            published = Path.Combine(Path.GetDirectoryName(files.CertificatePath)!, "..", "published");
            return options with { Files = files, ReloadInterval = TimeSpan.FromMilliseconds(100), Publisher = new DirectoryTrustBundlePublisher(published) };
        });
        _published = published!;
        _newRoot = SelfSignedRoot.Write(Path.Combine(_ca.Directory, "new-root"), CaTestServer.TrustDomain);
        _oldRoot = X509Certificate2.CreateFromPem(File.ReadAllText(_ca.Files.CertificatePath));
        _newRootCertificate = X509Certificate2.CreateFromPem(File.ReadAllText(_newRoot.CertificatePath));
    }

    public async Task DisposeAsync()
    {
        await _ca.DisposeAsync();
    }

    [Fact]
    public async Task RotationStepByStep_CertificatesAfterTheSwitchChainToTheNewRoot_AndThePublishedBundleFollowsEachStep()
    {
        var metrics = _ca.Server.Metrics;
        await CaTestPki.WaitUntilAsync(() => Published() is ([var only], var signing) && only == _oldRoot.Thumbprint && signing == _oldRoot.Thumbprint);
        Assert.Equal(_oldRoot.Thumbprint, RootOfIssued(await IssueAsync(_oldRoot, _ca.NodeCertificate("node1"))));

        // 1. Both roots in the bundle: still signed by the old one, both published.
        Replace(_ca.Files.TrustBundlePath, _oldRoot.ExportCertificatePem() + "\n" + _newRootCertificate.ExportCertificatePem() + "\n");
        await CaTestPki.WaitUntilAsync(() => metrics.SignerReloads(ok: true) == 1);
        await CaTestPki.WaitUntilAsync(() => Published().Roots.Count == 2);
        Assert.Equal(_oldRoot.Thumbprint, Published().Signing);
        Assert.Equal(_oldRoot.Thumbprint, RootOfIssued(await IssueAsync(_oldRoot, _ca.NodeCertificate("node1"))));

        // 2. The new root's certificate and key (a Secret update swaps both at once): signed by the new root from now on.
        SwapSigner(_newRoot);
        await CaTestPki.WaitUntilAsync(() => metrics.SignerReloads(ok: true) == 2);
        await CaTestPki.WaitUntilAsync(() => Published().Signing == _newRootCertificate.Thumbprint);
        var afterSwitch = await IssueAsync(_newRootCertificate, _ca.NodeCertificate("node1"));
        Assert.Equal(_newRootCertificate.Thumbprint, RootOfIssued(afterSwitch));
        using (var leaf = X509Certificate2.CreateFromPem(afterSwitch.CertChain[0]))
        {
            Assert.True(CaTestPki.ChainsTo(leaf, _newRootCertificate, server: false));
            Assert.False(CaTestPki.ChainsTo(leaf, _oldRoot, server: false));
        }

        // 3. Old root removed: only the new one is published, and a node certificate of the old root no longer authenticates.
        Replace(_ca.Files.TrustBundlePath, _newRootCertificate.ExportCertificatePem() + "\n");
        await CaTestPki.WaitUntilAsync(() => metrics.SignerReloads(ok: true) == 3);
        await CaTestPki.WaitUntilAsync(() => Published().Roots.Count == 1);
        Assert.Equal([_newRootCertificate.Thumbprint], Published().Roots);
        var refused = await Assert.ThrowsAsync<RpcException>(() => IssueAsync(_newRootCertificate, _ca.NodeCertificate("node1")));
        Assert.Equal(StatusCode.PermissionDenied, refused.StatusCode);
        Assert.Equal(1, metrics.RefusedCount(RefusalReason.NodeCertificateUntrusted));
        var newNode = CaCertificates.IssueNodeCertificate(CertificateAuthority.Load(_ca.Files), new NodeIdentity(CaTestServer.TrustDomain, "node1"), TimeSpan.FromHours(1));
        Assert.Equal(_newRootCertificate.Thumbprint, RootOfIssued(await IssueAsync(_newRootCertificate, newNode)));
        Assert.Equal(0, metrics.SignerReloads(ok: false));
        Assert.Contains("weft_ca_trust_bundle_roots 1", await metrics.ExportAsync());
    }

    [Fact]
    public async Task MalformedOrMismatchedNewKey_KeepsTheOldSigner_CountsAndLogsIt_ThenAGoodOneIsTaken()
    {
        var metrics = _ca.Server.Metrics;
        Replace(_ca.Files.TrustBundlePath, _oldRoot.ExportCertificatePem() + "\n" + _newRootCertificate.ExportCertificatePem() + "\n");
        await CaTestPki.WaitUntilAsync(() => metrics.SignerReloads(ok: true) == 1);

        // A key that is not PEM: refused, the old root keeps signing.
        Replace(_ca.Files.KeyPath, "-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n");
        await CaTestPki.WaitUntilAsync(() => metrics.SignerReloads(ok: false) == 1);
        Assert.Equal(_oldRoot.Thumbprint, RootOfIssued(await IssueAsync(_oldRoot, _ca.NodeCertificate("node1"))));

        // The new root's key beside the old certificate (a half-done edit): refused too, once.
        Replace(_ca.Files.KeyPath, File.ReadAllText(_newRoot.KeyPath));
        await CaTestPki.WaitUntilAsync(() => metrics.SignerReloads(ok: false) == 2);
        await Task.Delay(500);
        Assert.Equal(2, metrics.SignerReloads(ok: false));
        Assert.Equal(_oldRoot.Thumbprint, RootOfIssued(await IssueAsync(_oldRoot, _ca.NodeCertificate("node1"))));
        Assert.Contains("weft_ca_signer_reloads_total{result=\"failed\"} 2", await metrics.ExportAsync());
        Assert.Equal(_oldRoot.Thumbprint, Published().Signing);

        // The certificate follows: the pair is whole, and the new root signs.
        Replace(_ca.Files.CertificatePath, File.ReadAllText(_newRoot.CertificatePath));
        await CaTestPki.WaitUntilAsync(() => metrics.SignerReloads(ok: true) == 2);
        Assert.Equal(_newRootCertificate.Thumbprint, RootOfIssued(await IssueAsync(_newRootCertificate, _ca.NodeCertificate("node1"))));
    }

    [Fact]
    public async Task SignerWhoseRootIsNotInTheBundle_IsNotTaken()
    {
        var metrics = _ca.Server.Metrics;
        SwapSigner(_newRoot);
        await CaTestPki.WaitUntilAsync(() => metrics.SignerReloads(ok: false) == 1);
        Assert.Equal(_oldRoot.Thumbprint, RootOfIssued(await IssueAsync(_oldRoot, _ca.NodeCertificate("node1"))));
        Assert.Equal(_oldRoot.Thumbprint, Published().Signing);
    }

    [Fact]
    public async Task AnAgentFollowingThePublishedBundle_RenewsEarly_WhenTheCaSwitchesRoots()
    {
        var work = Path.Combine(_ca.Directory, "agent");
        var node = CaCertificates.WriteNodeCertificate(_ca.Authority, new NodeIdentity(CaTestServer.TrustDomain, "node1"), work, TimeSpan.FromHours(1));
        await CaTestPki.WaitUntilAsync(() => File.Exists(Path.Combine(_published, PublishedTrustBundle.SigningRootKey)));
        var service = new CaServiceOptions(new Uri($"https://127.0.0.1:{_ca.Server.Endpoint.Port}"), node.CertificatePath, node.KeyPath);
        using var identities = IdentityManager.Start(new IdentityOptions(CaTestServer.TrustDomain, null, new CaServiceClient(service))
        {
            TrustBundlePath = Path.Combine(_published, PublishedTrustBundle.RootsKey),
            SigningRootPath = Path.Combine(_published, PublishedTrustBundle.SigningRootKey),
            SvidLifetime = TimeSpan.FromHours(1),
            CheckInterval = TimeSpan.FromMilliseconds(200),
        });
        identities.SetAllowed([WebId]);
        var first = await identities.GetAsync(WebId);
        Assert.Equal(_oldRoot.Thumbprint, first.RootThumbprint);
        Assert.Equal(0, identities.CertificatesFromOtherRoots);

        Replace(_ca.Files.TrustBundlePath, _oldRoot.ExportCertificatePem() + "\n" + _newRootCertificate.ExportCertificatePem() + "\n");
        await CaTestPki.WaitUntilAsync(() => identities.Verifier.TrustBundle.Count == 2);
        Assert.Same(first, identities.Get(WebId));

        // A one-hour certificate is far from half life: only the switch of roots renews it.
        SwapSigner(_newRoot);
        await CaTestPki.WaitUntilAsync(() => identities.SigningRoot == _newRootCertificate.Thumbprint);
        await CaTestPki.WaitUntilAsync(() => identities.Get(WebId).RootThumbprint == _newRootCertificate.Thumbprint);
        Assert.Equal(0, identities.CertificatesFromOtherRoots);
        Assert.Equal(1, identities.Renewals);
        var renewed = identities.Get(WebId);
        Assert.True(CaTestPki.ChainsTo(renewed.Certificate, _newRootCertificate, server: true, renewed.Intermediates));
    }

    /// <summary>Writes aside and renames in, so the CA never reads half a file.</summary>
    private static void Replace(string path, string contents)
    {
        File.WriteAllText(path + ".new", contents);
        File.Move(path + ".new", path, overwrite: true);
    }

    private void SwapSigner(CaFiles next)
    {
        // As kubelet updates a Secret volume: both files change together (here: written aside, renamed in).
        File.Copy(next.KeyPath, _ca.Files.KeyPath + ".new", overwrite: true);
        File.Copy(next.CertificatePath, _ca.Files.CertificatePath + ".new", overwrite: true);
        File.Move(_ca.Files.KeyPath + ".new", _ca.Files.KeyPath, overwrite: true);
        File.Move(_ca.Files.CertificatePath + ".new", _ca.Files.CertificatePath, overwrite: true);
    }

    private async Task<Weft.Ca.Protocol.IstioCertificateResponse> IssueAsync(X509Certificate2 servingRoot, X509Certificate2 nodeCertificate)
    {
        using var client = new CaClient(_ca.Server.Endpoint, servingRoot, nodeCertificate);
        using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        return await client.CreateAsync(WebId.ToString(), CaTestPki.Csr(key, WebId.ToString()));
    }

    private static string RootOfIssued(Weft.Ca.Protocol.IstioCertificateResponse response)
    {
        using var root = X509Certificate2.CreateFromPem(response.CertChain[^1]);
        return root.Thumbprint;
    }

    private (List<string> Roots, string? Signing) Published()
    {
        var roots = Path.Combine(_published, PublishedTrustBundle.RootsKey);
        var signing = Path.Combine(_published, PublishedTrustBundle.SigningRootKey);
        if (!File.Exists(roots) || !File.Exists(signing))
        {
            return ([], null);
        }

        var collection = new X509Certificate2Collection();
        collection.ImportFromPem(File.ReadAllText(roots));
        using var signer = X509Certificate2.CreateFromPem(File.ReadAllText(signing));
        return (collection.Select(c => c.Thumbprint).ToList(), signer.Thumbprint);
    }
}
