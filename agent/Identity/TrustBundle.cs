using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;

namespace Weft.Identity;

/// <summary>The mesh's roots read from a PEM file, for a node that holds no CA key; equal contents, equal fingerprint.</summary>
internal sealed record TrustBundle(X509Certificate2Collection Roots, string Fingerprint)
{
    /// <summary>Reads and checks the bundle. Throws <see cref="IdentityException"/> naming the file and the problem.</summary>
    public static TrustBundle Load(string path)
    {
        string pem;
        try
        {
            pem = File.ReadAllText(path);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new IdentityException($"cannot read the trust bundle {path}: {e.Message}", e);
        }

        if (!pem.Contains("-----BEGIN CERTIFICATE-----", StringComparison.Ordinal))
        {
            throw new IdentityException($"trust bundle {path} holds no PEM certificate (-----BEGIN CERTIFICATE-----)");
        }

        var roots = new X509Certificate2Collection();
        try
        {
            roots.ImportFromPem(pem);
        }
        catch (CryptographicException e)
        {
            throw new IdentityException($"trust bundle {path} is not valid PEM: {e.Message}", e);
        }

        foreach (var root in roots)
        {
            if (root.Extensions.OfType<X509BasicConstraintsExtension>().FirstOrDefault() is not { CertificateAuthority: true })
            {
                throw new IdentityException($"trust bundle {path} entry ({root.Subject}) is not a CA certificate: basic constraints must say cA=true");
            }
        }

        return new TrustBundle(roots, Convert.ToHexString(SHA256.HashData(System.Text.Encoding.UTF8.GetBytes(pem))));
    }

    /// <summary>The thumbprint of the root in <paramref name="roots"/> that <paramref name="leaf"/> chains to, or null when none.</summary>
    public static string? RootOf(X509Certificate2 leaf, X509Certificate2Collection intermediates, X509Certificate2Collection roots)
    {
        using var chain = ChainTo(roots, intermediates);
        chain.ChainPolicy.VerificationFlags = X509VerificationFlags.IgnoreWrongUsage;
        return chain.Build(leaf) ? chain.ChainElements[^1].Certificate.Thumbprint : null;
    }

    /// <summary>A chain that trusts exactly <paramref name="roots"/>: no system store, no revocation check, no downloads.</summary>
    public static X509Chain ChainTo(X509Certificate2Collection roots, X509Certificate2Collection intermediates)
    {
        var chain = new X509Chain();
        chain.ChainPolicy.TrustMode = X509ChainTrustMode.CustomRootTrust;
        chain.ChainPolicy.CustomTrustStore.AddRange(roots);
        chain.ChainPolicy.ExtraStore.AddRange(intermediates);
        chain.ChainPolicy.RevocationMode = X509RevocationMode.NoCheck;
        chain.ChainPolicy.DisableCertificateDownloads = true;
        return chain;
    }

    /// <summary>
    /// The root the CA signs with now, as it publishes it (<c>signing-root.pem</c>): one CA certificate, which must be
    /// in <paramref name="bundle"/>. Returns its thumbprint; throws <see cref="IdentityException"/> naming the problem.
    /// </summary>
    public static string LoadSigningRoot(string path, X509Certificate2Collection bundle)
    {
        X509Certificate2 root;
        try
        {
            root = X509Certificate2.CreateFromPem(File.ReadAllText(path));
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or CryptographicException)
        {
            throw new IdentityException($"cannot read the CA's signing root {path}: {e.Message}", e);
        }

        using (root)
        {
            return bundle.Any(r => r.Thumbprint == root.Thumbprint)
                ? root.Thumbprint
                : throw new IdentityException($"the CA's signing root {path} ({root.Subject}, {root.Thumbprint}) is not in the trust bundle: was the bundle published first?");
        }
    }
}
