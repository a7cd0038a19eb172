using System.Security.Cryptography.X509Certificates;
using Weft.Identity;

namespace Weft.Tests.Identity;

public class CertificateAuthorityTests
{
    private static readonly SpiffeId Id = new("cluster.local", "demo", "a");

    [Fact]
    public void Load_RootCaFromFiles_SignsSvidsThatItsBundleVerifies()
    {
        using var dir = new TempDir();
        var root = TestCa.Root("root");
        var ca = CertificateAuthority.Load(root.WriteTo(dir.Path));

        Assert.True(ca.Signer.HasPrivateKey);
        Assert.Empty(ca.Intermediates);
        Assert.Single(ca.TrustBundle);
        var svid = new SvidIssuer().Issue(ca, Id);
        Assert.Equal(Id, new SpiffeVerifier("cluster.local", ca.TrustBundle).Verify(svid.Certificate, svid.Intermediates).Id);
    }

    [Fact]
    public void Load_IntermediateCaWithChainFile_PresentsIssuingCaThenChain()
    {
        using var dir = new TempDir();
        var middle = TestCa.Root("root").Intermediate("middle");
        var issuing = middle.Intermediate("issuing");

        var ca = CertificateAuthority.Load(issuing.WriteTo(dir.Path));

        Assert.Equal([issuing.Certificate.Thumbprint, middle.Certificate.Thumbprint], ca.Intermediates.Select(c => c.Thumbprint));
    }

    [Fact]
    public void Load_CertificateFileHoldingTheChainToo_TakesTheRestAsChain()
    {
        using var dir = new TempDir();
        var middle = TestCa.Root("root").Intermediate("middle");
        var issuing = middle.Intermediate("issuing");
        var files = issuing.WriteTo(dir.Path);
        File.WriteAllText(files.CertificatePath, issuing.CertificatePem + middle.CertificatePem);
        File.Delete(files.ChainPath!);

        var ca = CertificateAuthority.Load(files with { ChainPath = null });

        Assert.Equal(2, ca.Intermediates.Count);
    }

    [Fact]
    public void Load_RsaCa_IssuesEcdsaSvids()
    {
        using var dir = new TempDir();
        var ca = CertificateAuthority.Load(TestCa.Root("rsa-root", rsa: true).WriteTo(dir.Path));

        var svid = new SvidIssuer().Issue(ca, Id);

        Assert.NotNull(svid.Certificate.GetECDsaPublicKey());
        Assert.True(new SpiffeVerifier("cluster.local", ca.TrustBundle).Verify(svid.Certificate).Verified);
    }

    [Fact]
    public void Load_MissingFile_NamesIt()
    {
        using var dir = new TempDir();
        var files = TestCa.Root("root").WriteTo(dir.Path);
        File.Delete(files.KeyPath);

        var e = Assert.Throws<IdentityException>(() => CertificateAuthority.Load(files));

        Assert.Contains($"cannot read the CA private key {files.KeyPath}", e.Message);
    }

    [Fact]
    public void Load_KeyOfAnotherCa_IsRefusedAsNotBelongingToTheCertificate()
    {
        using var dir = new TempDir();
        var files = TestCa.Root("root").WriteTo(dir.Path);
        File.WriteAllText(files.KeyPath, TestCa.Root("other").KeyPem);

        var e = Assert.Throws<IdentityException>(() => CertificateAuthority.Load(files));

        Assert.Contains($"CA private key {files.KeyPath} does not belong to CA certificate {files.CertificatePath}", e.Message);
    }

    [Fact]
    public void Load_RsaKeyForAnEcdsaCertificate_IsRefused()
    {
        using var dir = new TempDir();
        var files = TestCa.Root("root").WriteTo(dir.Path);
        File.WriteAllText(files.KeyPath, TestCa.Root("rsa", rsa: true).KeyPem);

        var e = Assert.Throws<IdentityException>(() => CertificateAuthority.Load(files));

        Assert.Contains($"CA private key {files.KeyPath} is not an ECDSA private key, but CA certificate {files.CertificatePath}", e.Message);
    }

    [Fact]
    public void Load_CertificateWithoutCaTrue_IsRefused()
    {
        using var dir = new TempDir();
        var files = TestCa.Root("not-a-ca", ca: false).WriteTo(dir.Path);

        var e = Assert.Throws<IdentityException>(() => CertificateAuthority.Load(files));

        Assert.Contains("is not a CA certificate: basic constraints must say cA=true", e.Message);
    }

    [Fact]
    public void Load_CaWhoseKeyUsageLacksKeyCertSign_IsRefused()
    {
        using var dir = new TempDir();
        var files = TestCa.Root("no-cert-sign", usage: X509KeyUsageFlags.DigitalSignature).WriteTo(dir.Path);

        var e = Assert.Throws<IdentityException>(() => CertificateAuthority.Load(files));

        Assert.Contains("lacks keyCertSign", e.Message);
    }

    [Fact]
    public void Load_CaThatDoesNotChainToTheBundle_IsRefused()
    {
        using var dir = new TempDir();
        var files = TestCa.Root("root-a").WriteTo(dir.Path, TestCa.Root("root-b"));

        var e = Assert.Throws<IdentityException>(() => CertificateAuthority.Load(files));

        Assert.Contains("does not chain to a root in the trust bundle", e.Message);
    }

    [Fact]
    public void Load_IntermediateWithoutItsChainFile_IsRefused()
    {
        using var dir = new TempDir();
        var issuing = TestCa.Root("root").Intermediate("middle").Intermediate("issuing");
        var files = issuing.WriteTo(dir.Path) with { ChainPath = null };

        var e = Assert.Throws<IdentityException>(() => CertificateAuthority.Load(files));

        Assert.Contains("put its root in the bundle and any intermediates in the chain file", e.Message);
    }

    [Fact]
    public void Load_GarbageCertificateOrEncryptedKey_IsRefusedClearly()
    {
        using var dir = new TempDir();
        var files = TestCa.Root("root").WriteTo(dir.Path);
        File.WriteAllText(files.CertificatePath, "hello");
        Assert.Contains("holds no PEM certificate", Assert.Throws<IdentityException>(() => CertificateAuthority.Load(files)).Message);

        File.WriteAllText(files.CertificatePath, TestCa.Root("root").CertificatePem);
        File.WriteAllText(files.KeyPath, "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n");
        Assert.Contains("is encrypted", Assert.Throws<IdentityException>(() => CertificateAuthority.Load(files)).Message);
    }

    [Fact]
    public void Load_ExpiredCa_IsRefused()
    {
        using var dir = new TempDir();
        var files = TestCa.Root("root", lifetime: TimeSpan.FromDays(30)).WriteTo(dir.Path);
        var clock = new ManualClock();
        clock.Advance(TimeSpan.FromDays(31));

        var e = Assert.Throws<IdentityException>(() => CertificateAuthority.Load(files, clock));

        Assert.Contains("expired at", e.Message);
    }
}
