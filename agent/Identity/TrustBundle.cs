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
}
