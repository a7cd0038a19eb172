namespace Weft.Identity;

/// <summary>An identity operation refused or failed; the message names the cause and, where there is one, the fix.</summary>
internal sealed class IdentityException : Exception
{
    public IdentityException(string message)
        : base(message)
    {
    }

    public IdentityException(string message, Exception inner)
        : base(message, inner)
    {
    }
}
