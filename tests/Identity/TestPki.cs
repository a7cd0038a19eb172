using System.Diagnostics;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using Weft.Identity;

namespace Weft.Tests.Identity;

/// <summary>A CA made in code for tests: a root or an intermediate under another <see cref="TestCa"/>.</summary>
internal sealed class TestCa
{
    private TestCa(X509Certificate2 certificate, AsymmetricAlgorithm key, TestCa? parent)
    {
        Certificate = certificate;
        Key = key;
        Parent = parent;
    }

    public X509Certificate2 Certificate { get; }

    public AsymmetricAlgorithm Key { get; }

    public TestCa? Parent { get; }

    public TestCa RootCa => Parent?.RootCa ?? this;

    public string CertificatePem => Certificate.ExportCertificatePem() + "\n";

    public string KeyPem => (Key is RSA rsa ? rsa.ExportPkcs8PrivateKeyPem() : ((ECDsa)Key).ExportPkcs8PrivateKeyPem()) + "\n";

    public static TestCa Root(string name, bool rsa = false, bool ca = true, X509KeyUsageFlags usage = X509KeyUsageFlags.KeyCertSign | X509KeyUsageFlags.CrlSign, TimeSpan? lifetime = null)
    {
        AsymmetricAlgorithm key = rsa ? RSA.Create(2048) : ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var request = Request(name, key);
        AddCaExtensions(request, ca, usage);
        var now = DateTimeOffset.UtcNow;
        var certificate = request.CreateSelfSigned(now.AddDays(-10), now + (lifetime ?? TimeSpan.FromDays(30)));
        return new TestCa(certificate, key, null);
    }

    public TestCa Intermediate(string name)
    {
        var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var request = Request(name, key);
        AddCaExtensions(request, true, X509KeyUsageFlags.KeyCertSign | X509KeyUsageFlags.CrlSign);
        var now = DateTimeOffset.UtcNow;
        using var signed = request.Create(Certificate, now.AddDays(-9), now.AddDays(20), RandomNumberGenerator.GetBytes(12));
        return new TestCa(signed.CopyWithPrivateKey(key), key, this);
    }

    public const string ServerAuth = "1.3.6.1.5.5.7.3.1";
    public const string ClientAuth = "1.3.6.1.5.5.7.3.2";

    /// <summary>A leaf signed by this CA, shaped as the caller says (for forged or broken SVIDs): null usage leaves the key usage extension out, null extendedUsage the EKU.</summary>
    public X509Certificate2 Leaf(IEnumerable<string> uris, bool ca = false, DateTimeOffset? notBefore = null, DateTimeOffset? notAfter = null,
        X509KeyUsageFlags? usage = X509KeyUsageFlags.DigitalSignature, string[]? extendedUsage = null)
    {
        var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var request = new CertificateRequest(new X500DistinguishedName(""), key, HashAlgorithmName.SHA256);
        request.CertificateExtensions.Add(new X509BasicConstraintsExtension(ca, false, 0, true));
        if (usage is { } flags)
        {
            request.CertificateExtensions.Add(new X509KeyUsageExtension(flags, true));
        }
        if (extendedUsage is not null)
        {
            var purposes = new OidCollection();
            foreach (var oid in extendedUsage)
            {
                purposes.Add(new Oid(oid));
            }
            request.CertificateExtensions.Add(new X509EnhancedKeyUsageExtension(purposes, false));
        }
        var san = new SubjectAlternativeNameBuilder();
        foreach (var uri in uris)
        {
            san.AddUri(new Uri(uri));
        }
        request.CertificateExtensions.Add(san.Build(true));
        var now = DateTimeOffset.UtcNow;
        using var signed = request.Create(Certificate, notBefore ?? now.AddMinutes(-5), notAfter ?? now.AddHours(1), RandomNumberGenerator.GetBytes(12));
        return signed.CopyWithPrivateKey(key);
    }

    /// <summary>The chain a leaf of this CA presents after itself: this CA and its parents, roots excluded.</summary>
    public X509Certificate2Collection Presented()
    {
        var collection = new X509Certificate2Collection();
        for (var ca = this; ca.Parent is not null; ca = ca.Parent)
        {
            collection.Add(ca.Certificate);
        }
        return collection;
    }

    /// <summary>Writes ca.crt, ca.key, bundle.pem (this root, or the given roots) and, for intermediates, chain.pem.</summary>
    public CaFiles WriteTo(string folder, params TestCa[] bundle)
    {
        Directory.CreateDirectory(folder);
        var files = new CaFiles(Path.Combine(folder, "ca.crt"), Path.Combine(folder, "ca.key"), Path.Combine(folder, "bundle.pem"),
            Parent is null ? null : Path.Combine(folder, "chain.pem"));
        File.WriteAllText(files.CertificatePath, CertificatePem);
        File.WriteAllText(files.KeyPath, KeyPem);
        File.WriteAllText(files.TrustBundlePath, string.Concat((bundle.Length == 0 ? [RootCa] : bundle).Select(b => b.CertificatePem)));
        if (files.ChainPath is not null)
        {
            var chain = new List<TestCa>();
            for (var ca = Parent; ca?.Parent is not null; ca = ca.Parent)
            {
                chain.Add(ca);
            }
            File.WriteAllText(files.ChainPath, string.Concat(chain.Select(c => c.CertificatePem)));
        }
        return files;
    }

    public CertificateAuthority Authority() =>
        CertificateAuthority.FromPem(CertificatePem, KeyPem, RootCa.CertificatePem, Parent?.Parent is null ? null : string.Concat(Parent.Presented().Select(c => c.ExportCertificatePem() + "\n")));

    private static CertificateRequest Request(string name, AsymmetricAlgorithm key) => key switch
    {
        RSA rsa => new CertificateRequest($"CN={name}, O=weft-test", rsa, HashAlgorithmName.SHA256, RSASignaturePadding.Pkcs1),
        ECDsa ec => new CertificateRequest($"CN={name}, O=weft-test", ec, HashAlgorithmName.SHA256),
        _ => throw new ArgumentException("key"),
    };

    private static void AddCaExtensions(CertificateRequest request, bool ca, X509KeyUsageFlags usage)
    {
        request.CertificateExtensions.Add(new X509BasicConstraintsExtension(ca, false, 0, true));
        request.CertificateExtensions.Add(new X509KeyUsageExtension(usage, true));
        request.CertificateExtensions.Add(new X509SubjectKeyIdentifierExtension(request.PublicKey, false));
    }
}

/// <summary>A temporary folder removed when the test ends.</summary>
internal sealed class TempDir : IDisposable
{
    public TempDir()
    {
        Path = Directory.CreateTempSubdirectory("weft-identity-").FullName;
    }

    public string Path { get; }

    public string File(string name) => System.IO.Path.Combine(Path, name);

    public void Dispose()
    {
        try
        {
            Directory.Delete(Path, recursive: true);
        }
        catch (IOException)
        {
        }
    }
}

/// <summary>A clock the test moves by hand; timers still run on real time.</summary>
internal sealed class ManualClock : TimeProvider
{
    private DateTimeOffset _now = DateTimeOffset.UtcNow;

    public override DateTimeOffset GetUtcNow() => _now;

    public void Advance(TimeSpan by) => _now += by;
}

/// <summary>Runs the openssl CLI, an independent TLS and X.509 implementation.</summary>
internal static class Openssl
{
    public static (int Code, string Output) Run(params string[] args)
    {
        var info = new ProcessStartInfo("openssl") { RedirectStandardOutput = true, RedirectStandardError = true, RedirectStandardInput = true };
        foreach (var a in args)
        {
            info.ArgumentList.Add(a);
        }
        using var process = Process.Start(info)!;
        process.StandardInput.Close();
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = process.StandardError.ReadToEndAsync();
        if (!process.WaitForExit(30_000))
        {
            process.Kill();
            throw new TimeoutException("openssl " + string.Join(' ', args));
        }
        return (process.ExitCode, stdout.Result + stderr.Result);
    }

    public static string Ok(params string[] args)
    {
        var (code, output) = Run(args);
        Assert.True(code == 0, $"openssl {string.Join(' ', args)} exited {code}: {output}");
        return output;
    }
}
